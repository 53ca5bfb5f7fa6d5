"""ScaleDown's reranking metric: agreement of relevance scores with a teacher reranker's, per query."""

import datasets
import evaluate

from scaledown.evaluation.text import mean, ndcg_at_k, pearson, spearman


_DESCRIPTION = """
For each query, the Spearman and Pearson correlations between the model's relevance scores of its documents and the
teacher's, and nDCG@k of the model's ranking with the teacher's scores (min-max scaled per query) as gains; averaged
over queries (queries with fewer than two documents or constant scores are skipped for correlations).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): the model's score of each document of each query.
    references (`list[list[float]]`): the teacher's scores, same shape.
    k (`int`, defaults to 10): nDCG cut-off.
Returns:
    `dict` with `spearman`, `pearson`, `ndcg@k` and `count`.
"""


class Reranking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, k: int = 10):
        for i, (p, r) in enumerate(zip(predictions, references)):
            if len(p) != len(r):
                raise ValueError(f"Query {i}: {len(p)} scores for {len(r)} teacher scores.")
        pairs = [(list(p), list(r)) for p, r in zip(predictions, references) if p]
        return {
            "spearman": mean([spearman(p, r) for p, r in pairs]),
            "pearson": mean([pearson(p, r) for p, r in pairs]),
            f"ndcg@{k}": mean([ndcg_at_k(p, r, k) for p, r in pairs]),
            "count": len(pairs),
        }
