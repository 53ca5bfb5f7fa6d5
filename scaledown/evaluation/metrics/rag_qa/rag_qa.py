"""ScaleDown's RAG question-answering metric: Match, exact match, token F1 and ROUGE-L against reference answers."""

import datasets
import evaluate

from scaledown.evaluation.text import exact_match, match, mean, rouge_l, token_f1


_DESCRIPTION = """
Match (a normalised reference answer appears in the normalised prediction, as in BERGEN and OSCAR), exact match and
token F1 (SQuAD's official normalisation) and ROUGE-L F-measure (longest common subsequence of normalised tokens), each
the best over the references and averaged over the predictions. With the teacher's answer as the only reference the
same metric measures fidelity to the teacher.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated answers.
    references (`list[list[str]]`): acceptable answers for each prediction.
Returns:
    `dict` with `match`, `exact_match`, `f1`, `rouge_l` (0..1) and `count`.
Examples:
    >>> metric = evaluate.load("scaledown/evaluation/metrics/rag_qa")
    >>> metric.compute(predictions=["It is Paris."], references=[["Paris"]])["match"]
    1.0
"""

_CITATION = """
@article{louis2025oscar,
  title={OSCAR: Online Soft Compression And Reranking},
  author={Louis, Maxime and Formal, Thibault and D{\\'e}jean, Herv{\\'e} and Clinchant, St{\\'e}phane},
  journal={arXiv preprint arXiv:2504.07109}, year={2025}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RagQa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        pairs = list(zip(predictions, references))
        return {
            "match": mean([match(p, r) for p, r in pairs]),
            "exact_match": mean([exact_match(p, r) for p, r in pairs]),
            "f1": mean([token_f1(p, r) for p, r in pairs]),
            "rouge_l": mean([rouge_l(p, r) for p, r in pairs]),
            "count": len(pairs),
        }
