"""Answer and ranking metrics as plain functions (the `evaluate` modules in `metrics/` wrap them).

Normalisation is SQuAD's official one: lower case, no punctuation, no articles (a, an, the), single spaces.
*Match* is BERGEN's / OSCAR's: a normalised gold answer appears inside the normalised prediction.
"""

import math
import re
import string
from collections import Counter


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def match(prediction: str, references: list[str]) -> float:
    """1.0 when a normalised reference is a substring of the normalised prediction."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(r) and normalize_answer(r) in pred for r in references))


def exact_match(prediction: str, references: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: list[str]) -> float:
    """SQuAD token F1, best over the references."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for reference in references:
        ref = normalize_answer(reference).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            score = float(pred == ref)
        elif common == 0:
            score = 0.0
        else:
            precision, recall = common / len(pred), common / len(ref)
            score = 2 * precision * recall / (precision + recall)
        best = max(best, score)
    return best


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, references: list[str]) -> float:
    """ROUGE-L F-measure on normalised tokens (longest common subsequence), best over the references."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for reference in references:
        ref = normalize_answer(reference).split()
        lcs = _lcs(pred, ref) if pred and ref else 0
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not pred and not ref:
            best = max(best, 1.0)
    return best


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 2:
        return float("nan")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return float("nan")
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(_ranks(x), _ranks(y))


def ndcg_at_k(scores: list[float], teacher_scores: list[float], k: int = 10) -> float:
    """nDCG@k of the ranking by `scores`, with the teacher's scores min-max scaled to [0, 1] per query as gains."""
    if not scores:
        return float("nan")
    low, high = min(teacher_scores), max(teacher_scores)
    gains = [(t - low) / (high - low) if high > low else 1.0 for t in teacher_scores]

    def dcg(order):
        return sum(gains[i] / math.log2(rank + 2) for rank, i in enumerate(order[:k]))

    ideal = dcg(sorted(range(len(gains)), key=lambda i: -gains[i]))
    if ideal == 0:
        return float("nan")
    return dcg(sorted(range(len(scores)), key=lambda i: -scores[i])) / ideal


def mean(values) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else float("nan")


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (`nan` and `None` with no value, `None` error with one)."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    average = sum(values) / n
    if n < 2:
        return average, None
    return average, math.sqrt(sum((v - average) ** 2 for v in values) / (n - 1) / n)
