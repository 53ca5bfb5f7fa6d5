"""`scaledown label`: teacher answers and teacher relevance scores for a prepared dataset.

* Answers: a teacher causal LM (by default the base generator: self-distillation) reads the raw retrieved documents
  with the very prompt the compressed model sees, and answers greedily.
* Relevance: a cross-encoder (`AutoModelForSequenceClassification`) when one is given; else a dense bi-encoder's
  cosine similarity (e.g. all-MiniLM-L6-v2, offline from PyPI); else the teacher LLM's log-odds of answering "Yes"
  rather than "No" to "Does the document answer the question?".

Labelling is resumable: every finished batch is appended (and fsync'ed) to `<output>.partial/<split>.jsonl`, keyed by
row index. A run killed at any moment (even `kill -9`) and restarted skips what is done, drops a torn last line, and
ends with every row labelled exactly once; the final dataset is written atomically.
"""

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging

from ..configuration_scaledown import ScaleDownConfig
from ..processing_scaledown import build_generator_inputs, check_positive, raw_document_segments
from .data import read_data_record, save_dataset_atomically, sentence_embeddings


logger = logging.get_logger(__name__)

RELEVANCE_QUESTION = "Does the document answer the question? Answer Yes or No."


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def teacher_answers(
    model, tokenizer, config: ScaleDownConfig, questions: list[str], documents: list[list[str]], max_new_tokens=128
) -> list[str]:
    """Greedy answers of `model` reading the raw documents (truncated to `config.doc_max_length` tokens) in the same
    chat prompt as the compressed model."""
    segments = raw_document_segments(tokenizer, config, documents)
    inputs = build_generator_inputs(tokenizer, config, questions, segments, padding_side="left")
    device = _device_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(
        input_ids=inputs["input_ids"].to(device),
        attention_mask=inputs["attention_mask"].to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _yes_no_ids(tokenizer) -> tuple[int, int]:
    ids = []
    for word in ("Yes", "No"):
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"The teacher tokenizer cannot encode {word!r}.")
        ids.append(tokens[0])
    return ids[0], ids[1]


@torch.no_grad()
def llm_relevance_scores(
    model, tokenizer, config: ScaleDownConfig, questions: list[str], documents: list[list[str]]
) -> list[list[float]]:
    """Per question, per document: log p("Yes") - log p("No") of the teacher LLM asked whether the document answers
    the question (a relevance logit, like a cross-encoder's)."""
    yes, no = _yes_no_ids(tokenizer)
    pairs = [(q, d) for q, docs in zip(questions, documents) for d in docs]
    if not pairs:
        return [[] for _ in questions]
    prompts = [f"{q}\n\n{RELEVANCE_QUESTION}" for q, _ in pairs]
    segments = raw_document_segments(tokenizer, config, [[d] for _, d in pairs])
    inputs = build_generator_inputs(tokenizer, config, prompts, segments, padding_side="left")
    device = _device_of(model)
    logits = (
        model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))
        .logits[:, -1]
        .float()
    )
    flat = (logits[:, yes] - logits[:, no]).tolist()
    counts = [len(docs) for docs in documents]
    out, start = [], 0
    for count in counts:
        out.append(flat[start : start + count])
        start += count
    return out


@torch.no_grad()
def cross_encoder_scores(model, tokenizer, questions: list[str], documents: list[list[str]]) -> list[list[float]]:
    """Per question, per document: the cross-encoder's relevance logit (the positive-minus-negative logit for a
    two-label head)."""
    pairs = [(q, d) for q, docs in zip(questions, documents) for d in docs]
    if not pairs:
        return [[] for _ in questions]
    encoded = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=True,
        max_length=512,
        return_tensors="pt",
    ).to(_device_of(model))
    logits = model(**encoded).logits.float()
    flat = (logits[:, -1] - logits[:, 0] if logits.shape[-1] > 1 else logits[:, 0]).tolist()
    out, start = [], 0
    for docs in documents:
        out.append(flat[start : start + len(docs)])
        start += len(docs)
    return out


def bi_encoder_scores(model, tokenizer, questions: list[str], documents: list[list[str]]) -> list[list[float]]:
    """Per question, per document: cosine similarity x 10 of mean-pooled sentence embeddings (a dense bi-encoder
    such as all-MiniLM-L6-v2) - a cheap offline relevance teacher when no cross-encoder is at hand."""
    embeddings = sentence_embeddings(model, tokenizer, list(questions) + [d for docs in documents for d in docs])
    queries, docs = embeddings[: len(questions)], embeddings[len(questions) :]
    out, start = [], 0
    for i, doc_list in enumerate(documents):
        out.append((docs[start : start + len(doc_list)] @ queries[i] * 10.0).tolist())
        start += len(doc_list)
    return out


class LabelJournal:
    """Append-only JSONL of finished rows, robust to a kill at any byte."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[int, dict] = {}
        if path.exists():
            self._recover()

    def _recover(self):
        data = self.path.read_bytes()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn last write
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            self.done[int(record["index"])] = record
            good_end += len(line)
        if good_end != len(data):
            logger.warning(f"{self.path}: dropping a torn record at byte {good_end} (interrupted run).")
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)

    def append(self, records: list[dict]):
        fresh = [r for r in records if r["index"] not in self.done]
        if not fresh:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            for record in fresh:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for record in fresh:
            self.done[record["index"]] = record


def _model_identity(model) -> dict | None:
    """What identifies a loaded model for the labelling journal: its name or path, hub revision, size, and a checksum
    of a few of its weights (cheap, and different for different weights under the same name)."""
    if model is None:
        return None
    params = list(model.parameters())
    probe = [params[0], params[len(params) // 2], params[-1]] if params else []
    return {
        "name_or_path": str(getattr(model.config, "_name_or_path", "")),
        "revision": getattr(model.config, "_commit_hash", None),
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in params),
        "checksum": [round(float(p.detach().double().sum()), 6) for p in probe],
    }


def labelling_fingerprint(dataset, splits, teacher, config, max_new_tokens, with_answers, with_scores, scorer) -> dict:
    """Everything that determines a label: a journal written under another fingerprint must not be resumed."""
    return {
        "data": {split: dataset[split]._fingerprint for split in splits},
        "teacher": _model_identity(teacher),
        "prompt": {
            "system_prompt": config.system_prompt,
            "doc_max_length": config.doc_max_length,
            "relevance_question": RELEVANCE_QUESTION,
        },
        "generation": {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1},
        "with_answers": sorted(with_answers) if isinstance(with_answers, (list, tuple, set)) else bool(with_answers),
        "with_scores": with_scores,
        "scorer": scorer,
    }


def _check_journal(journal_dir: Path, fingerprint: dict, overwrite: bool) -> None:
    path = journal_dir / "fingerprint.json"
    if overwrite and journal_dir.exists():
        shutil.rmtree(journal_dir)
    journal_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != fingerprint:
            differing = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise ValueError(
                f"{journal_dir} holds an interrupted labelling run with a different {', '.join(differing)}: resuming "
                "it would mix its labels with this run's. Run again with `--overwrite` (`overwrite=True`) to start "
                "over, or with the first run's settings to finish it."
            )
        return
    if any(journal_dir.glob("*.jsonl")):
        raise ValueError(
            f"{journal_dir} holds labels of an interrupted run without a fingerprint (written by an older version): "
            "run again with `--overwrite` (`overwrite=True`) to start over."
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2))
    os.replace(tmp, path)


@dataclass
class LabelArguments:
    """`scaledown label`: teacher answers and relevance scores for a prepared dataset (see [`label_dataset`])."""

    data: str = field(default=None, metadata={"help": "Folder written by prepare-data."})
    output: str = field(default=None, metadata={"help": "Output folder (written atomically at the end)."})
    teacher: str = field(default=None, metadata={"help": "Teacher causal LM (hub id or folder), e.g. the generator."})
    cross_encoder: str | None = field(default=None, metadata={"help": "Relevance cross-encoder (else the teacher)."})
    batch_size: int = field(default=8, metadata={"help": "Questions per teacher batch."})
    max_new_tokens: int = field(default=128, metadata={"help": "Teacher answer length."})
    splits: list[str] | None = field(default=None, metadata={"help": "Splits to label (default: all)."})
    doc_max_length: int = field(default=128, metadata={"help": "Document tokens the teacher reads."})
    compression_rate: int = field(default=16, metadata={"help": "Only to build a consistent config."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt (default: ScaleDown's)."})
    no_scores: bool = field(default=False, metadata={"help": "Skip the relevance scores."})
    max_rows: int | None = field(
        default=None, metadata={"help": "Label (and keep) only the first N rows of each split (default: all)."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Drop the journal of an interrupted run instead of resuming it."}
    )

    def __post_init__(self):
        for name in ("data", "output", "teacher"):
            if not getattr(self, name):
                raise ValueError(f"`--{name}` is required.")


def label_dataset(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    teacher,
    teacher_tokenizer=None,
    config: ScaleDownConfig | None = None,
    cross_encoder=None,
    cross_encoder_tokenizer=None,
    bi_encoder=None,
    bi_encoder_tokenizer=None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    splits: list[str] | None = None,
    with_answers: bool | list[str] = True,
    with_scores: bool = True,
    teacher_kwargs: dict | None = None,
    overwrite: bool = False,
    max_rows: int | dict[str, int] | None = None,
):
    """Add `teacher_answer` and `teacher_scores` columns to the prepared dataset in `dataset_dir` and save it to
    `output_dir`. `teacher` / `cross_encoder` / `bi_encoder`: a loaded model or a hub id / folder; relevance comes
    from the cross-encoder, else the bi-encoder, else the teacher LLM. `with_answers` may list the splits that get
    teacher answers (e.g. `["train"]`). Resumable (see module doc): the journal carries a fingerprint of the data,
    teacher, prompt, generation options and scorer, and a resume under another one is refused (`overwrite=True`
    starts over). `max_rows` (one count for every split, or per split name): label and keep only the first rows of a
    split, e.g. `{"train": 600}` when training reads 600 questions of a larger prepared split."""
    from datasets import DatasetDict, load_from_disk
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens)
    config = config or ScaleDownConfig()
    if isinstance(teacher, (str, os.PathLike)):
        teacher_tokenizer = teacher_tokenizer or AutoTokenizer.from_pretrained(str(teacher))
        teacher = AutoModelForCausalLM.from_pretrained(str(teacher), **(teacher_kwargs or {}))
    if teacher_tokenizer is None:
        raise ValueError("`teacher_tokenizer` is required when `teacher` is a loaded model.")
    if teacher_tokenizer.pad_token is None:
        teacher_tokenizer.pad_token = teacher_tokenizer.eos_token
    if isinstance(cross_encoder, (str, os.PathLike)):
        cross_encoder_tokenizer = cross_encoder_tokenizer or AutoTokenizer.from_pretrained(str(cross_encoder))
        cross_encoder = AutoModelForSequenceClassification.from_pretrained(str(cross_encoder)).eval()
    if isinstance(bi_encoder, (str, os.PathLike)):
        from transformers import AutoModel

        bi_encoder_tokenizer = bi_encoder_tokenizer or AutoTokenizer.from_pretrained(str(bi_encoder))
        bi_encoder = AutoModel.from_pretrained(str(bi_encoder)).eval()
    teacher.eval()

    dataset = load_from_disk(str(dataset_dir))
    if not isinstance(dataset, DatasetDict):
        dataset = DatasetDict({"train": dataset})
    if max_rows is not None:
        limits = max_rows if isinstance(max_rows, dict) else dict.fromkeys(dataset, max_rows)
        unknown = [split for split in limits if split not in dataset]
        if unknown or any(not isinstance(n, int) or n < 1 for n in limits.values()):
            raise ValueError(
                f"`max_rows` ({max_rows}) must be positive counts of splits of {dataset_dir} ({list(dataset)})."
            )
        dataset = DatasetDict(
            {s: rows.select(range(min(limits.get(s, len(rows)), len(rows)))) for s, rows in dataset.items()}
        )
    output_dir = Path(output_dir)
    journal_dir = output_dir.parent / f".{output_dir.name}.partial"
    splits = list(splits or list(dataset))
    missing = [split for split in splits if split not in dataset]
    if missing:
        raise ValueError(f"{dataset_dir} has no split {missing[0]!r} (it has {list(dataset)}).")
    if cross_encoder is not None:
        scorer = {"cross_encoder": _model_identity(cross_encoder)}
    elif bi_encoder is not None:
        scorer = {"bi_encoder": _model_identity(bi_encoder)}
    else:
        scorer = "teacher log-odds"
    fingerprint = labelling_fingerprint(
        dataset, splits, teacher, config, max_new_tokens, with_answers, with_scores, scorer
    )
    _check_journal(journal_dir, fingerprint, overwrite)
    labelled = {}
    for split in splits:
        rows = dataset[split]
        answers_here = split in with_answers if isinstance(with_answers, (list, tuple, set)) else bool(with_answers)
        journal = LabelJournal(journal_dir / f"{split}.jsonl")
        todo = [i for i in range(len(rows)) if i not in journal.done]
        progress = logging.tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"label {split}", unit="q")
        for start in range(0, len(todo), batch_size):
            index = todo[start : start + batch_size]
            batch = rows.select(index)
            questions, documents = list(batch["question"]), [list(d) for d in batch["documents"]]
            answers = [None] * len(index)
            if answers_here:
                answers = teacher_answers(teacher, teacher_tokenizer, config, questions, documents, max_new_tokens)
            if not with_scores:
                scores = [None] * len(index)
            elif cross_encoder is not None:
                scores = cross_encoder_scores(cross_encoder, cross_encoder_tokenizer, questions, documents)
            elif bi_encoder is not None:
                scores = bi_encoder_scores(bi_encoder, bi_encoder_tokenizer, questions, documents)
            else:
                scores = llm_relevance_scores(teacher, teacher_tokenizer, config, questions, documents)
            journal.append(
                [{"index": i, "teacher_answer": a, "teacher_scores": s} for i, a, s in zip(index, answers, scores)]
            )
            progress.update(len(index))
        progress.close()
        missing = [i for i in range(len(rows)) if i not in journal.done]
        if missing:
            raise RuntimeError(f"Split {split}: rows {missing[:5]} were not labelled.")
        records = [journal.done[i] for i in range(len(rows))]
        if answers_here:
            rows = _replace_column(rows, "teacher_answer", [r["teacher_answer"] for r in records])
        if with_scores:
            rows = _replace_column(rows, "teacher_scores", [r["teacher_scores"] for r in records])
        labelled[split] = rows
    for split in dataset:
        labelled.setdefault(split, dataset[split])
    result = DatasetDict(labelled)
    record = read_data_record(dataset_dir)
    record["teacher"] = str(getattr(teacher.config, "_name_or_path", "")) or type(teacher).__name__
    save_dataset_atomically(result, output_dir, record)
    shutil.rmtree(journal_dir, ignore_errors=True)
    return result


def _replace_column(dataset, name: str, values: list):
    if name in dataset.column_names:
        dataset = dataset.remove_columns(name)
    return dataset.add_column(name, values)
