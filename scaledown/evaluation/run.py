"""`scaledown evaluate`: the compressed model against the uncompressed base generator, side by side.

Both answer the same held-out questions from the same retrieved documents, with the same chat prompt and the same
(greedy by default) decoding; only the documents' form differs (memory embeddings vs raw text, base generator without
the LoRA adapters). Metrics come from the package's `evaluate` modules (`rag_qa`, `reranking`), loaded by path.
"""

import json
import os
import time
from pathlib import Path

from transformers.utils import logging

from ..processing_scaledown import check_positive
from . import load_metric
from .text import match as match_one
from .text import mean_and_stderr


logger = logging.get_logger(__name__)


def _answer_metrics(metric, predictions, references) -> dict:
    kept = [(p, r) for p, r in zip(predictions, references) if r]
    if not kept:
        return {}
    result = metric.compute(predictions=[p for p, _ in kept], references=[r for _, r in kept])
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def paired_match(compressed: list[float], uncompressed: list[float]) -> dict:
    """Pairwise comparison of per-question Match (same questions, documents and prompt)."""
    mean_diff, stderr = mean_and_stderr([c - u for c, u in zip(compressed, uncompressed)])
    return {
        "questions": len(compressed),
        "match_difference": round(mean_diff, 4),
        "match_difference_stderr": round(stderr, 4) if stderr is not None else None,
        "compressed_only": sum(c > u for c, u in zip(compressed, uncompressed)),
        "uncompressed_only": sum(u > c for c, u in zip(compressed, uncompressed)),
        "both": sum(c == u == 1 for c, u in zip(compressed, uncompressed)),
        "neither": sum(c == u == 0 for c, u in zip(compressed, uncompressed)),
    }


def evaluate_model(
    model,
    rows: list[dict],
    batch_size: int = 8,
    num_documents: int = 10,
    with_baseline: bool = True,
    with_compressed: bool = True,
    teacher_is_baseline: bool = False,
    with_document_gain: bool = False,
    pruner=None,
    offline_model=None,
    **generate_kwargs,
) -> dict:
    """Answer `rows` (dicts with `question`, `documents`, optional `gold_answers`, `teacher_answer`,
    `teacher_scores`) with the compressed model and, when `with_baseline`, the uncompressed base generator.

    Returns a JSON-able report: settings, metrics per system (against gold answers and, for fidelity, against the
    teacher's answers), the paired Match comparison, reranking agreement, timings and per-question records. With
    `with_compressed=False` answers with the other systems only (e.g. the baseline of an untrained model). With
    `teacher_is_baseline` (the teacher is the base generator with this very prompt and decoding, as in
    self-distillation) the uncompressed answers serve as the teacher's. With `with_document_gain`, also how much the
    documents lower the likelihood cost of the gold answer, compressed vs raw (see [`document_gain`]). With `pruner`
    (a [`~scaledown.evaluation.pruning.SentencePruner`]), a third system, `pruned`: the base generator reading the
    documents cut to the pruner's sentences, paired against the uncompressed one like the compressed model. With
    `offline_model` (a ScaleDown model with `query_dependent=False`, best trained the same way as `model`), a fourth
    system, `offline`: the same questions answered from documents compressed without their question (as a
    compressed-document store holds them), paired against the uncompressed generator too; its document gain is added
    when `with_document_gain`.
    """
    check_positive(batch_size=batch_size, num_documents=num_documents)
    from ..processing_scaledown import validate_rag_inputs

    generate_kwargs.setdefault("max_new_tokens", 32)
    generate_kwargs.setdefault("do_sample", False)
    questions = [r["question"] for r in rows]
    documents = [list(r["documents"])[:num_documents] for r in rows]
    validate_rag_inputs(questions, documents)
    model.eval()
    records = [
        {"question": q, "gold_answers": list(r.get("gold_answers") or []), "teacher_answer": r.get("teacher_answer")}
        for q, r in zip(questions, rows)
    ]
    timings = {"compressed_seconds": 0.0} if with_compressed else {}
    if with_baseline:
        timings["uncompressed_seconds"] = 0.0
    if pruner is not None:
        timings["pruned_seconds"] = 0.0
    if offline_model is not None:
        if offline_model.config.query_dependent:
            raise ValueError("`offline_model` must be an offline ScaleDown model (`query_dependent=False`).")
        offline_model.eval()
        timings["offline_seconds"] = 0.0
    progress = logging.tqdm(total=len(rows), desc="evaluate", unit="q")
    for start in range(0, len(rows), batch_size):
        batch_q, batch_d = questions[start : start + batch_size], documents[start : start + batch_size]
        if with_compressed:
            began = time.perf_counter()
            compressed = model.compress_for_questions(batch_q, batch_d)
            answers = model.generate_from_compressed(batch_q, compressed, **generate_kwargs)
            timings["compressed_seconds"] += time.perf_counter() - began
            for offset, answer in enumerate(answers):
                records[start + offset]["compressed"] = answer
                if compressed.rerank_scores is not None:
                    records[start + offset]["rerank_scores"] = compressed.rerank_scores[offset].float().tolist()
        if with_baseline:
            began = time.perf_counter()
            baseline = model.generate_uncompressed(batch_q, batch_d, **generate_kwargs)
            timings["uncompressed_seconds"] += time.perf_counter() - began
            for offset, answer in enumerate(baseline):
                records[start + offset]["uncompressed"] = answer
        if pruner is not None:
            began = time.perf_counter()  # pruning (sentence encoder) + the base generator on the pruned text
            pruned_docs = [pruner.prune(q, d) for q, d in zip(batch_q, batch_d)]
            pruned = model.generate_uncompressed(batch_q, pruned_docs, **generate_kwargs)
            timings["pruned_seconds"] += time.perf_counter() - began
            for offset, answer in enumerate(pruned):
                records[start + offset]["pruned"] = answer
        if offline_model is not None:
            began = time.perf_counter()  # the documents compressed without the question, then the answers
            stored = offline_model.compress_for_questions(batch_q, batch_d)
            offline = offline_model.generate_from_compressed(batch_q, stored, **generate_kwargs)
            timings["offline_seconds"] += time.perf_counter() - began
            for offset, answer in enumerate(offline):
                records[start + offset]["offline"] = answer
        progress.update(len(batch_q))
    progress.close()
    if teacher_is_baseline and with_baseline:
        for record in records:
            record["teacher_answer"] = record["uncompressed"]

    qa = load_metric("rag_qa")
    systems = (["compressed"] if with_compressed else []) + (["uncompressed"] if with_baseline else [])
    systems += ["pruned"] if pruner else []
    systems += ["offline"] if offline_model is not None else []
    report = {
        "questions": len(rows),
        "settings": {"num_documents": num_documents, "batch_size": batch_size, **generate_kwargs},
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    for system in systems:
        predictions = [r[system] for r in records]
        report[system] = {
            "gold": _answer_metrics(qa, predictions, [r["gold_answers"] for r in records]),
            "teacher_fidelity": _answer_metrics(
                qa, predictions, [[r["teacher_answer"]] if r["teacher_answer"] else [] for r in records]
            ),
        }
        for r in records:
            r[f"{system}_match"] = match_one(r[system], r["gold_answers"]) if r["gold_answers"] else None
    if with_baseline:
        scored = [r for r in records if r["gold_answers"]]
        if with_compressed:
            report["paired"] = paired_match(
                [r["compressed_match"] for r in scored], [r["uncompressed_match"] for r in scored]
            )
        for system in ("pruned", "offline"):
            if system in systems:
                report[f"paired_{system}"] = paired_match(
                    [r[f"{system}_match"] for r in scored], [r["uncompressed_match"] for r in scored]
                )
    if pruner is not None:
        report["settings"]["pruning"] = {
            "budget_tokens_per_document": pruner.budget,
            "sentence_encoder": str(getattr(pruner.encoder.config, "_name_or_path", "")),
        }
    teacher_scores = [list(r.get("teacher_scores") or [])[:num_documents] for r in rows]
    if all("rerank_scores" in r for r in records) and any(teacher_scores):
        pairs = [
            (r["rerank_scores"], t) for r, t in zip(records, teacher_scores) if t and len(t) == len(r["rerank_scores"])
        ]
        if pairs:
            result = load_metric("reranking").compute(
                predictions=[p for p, _ in pairs], references=[t for _, t in pairs], k=num_documents
            )
            report["reranking"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    if with_document_gain:
        from .likelihood import document_gain

        report["document_gain"] = document_gain(model, rows, num_documents, batch_size, with_baseline)
        if offline_model is not None:
            baseline = report["document_gain"].get("uncompressed")
            report["offline_document_gain"] = document_gain(
                offline_model, rows, num_documents, batch_size, baseline=baseline
            )
    report["records"] = records
    return report


def evaluate_folder(
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    max_questions: int | None = None,
    output: str | os.PathLike | None = None,
    baseline: str | None = None,
    prune_rate: int | None = None,
    sentence_encoder: str | None = None,
    offline_model: str | os.PathLike | None = None,
    **kwargs,
) -> dict:
    """Load a ScaleDown folder and a dataset saved by `prepare-data`/`label`, evaluate, optionally write JSON.
    `baseline="prune"` adds the sentence-pruning baseline ([`~scaledown.evaluation.pruning.SentencePruner`]) at the
    model's compression rate (or `prune_rate`), with all-MiniLM-L6-v2 offline (or `sentence_encoder`).
    `offline_model` (a folder) adds an offline ScaleDown model answering the same rows."""
    check_positive(max_questions=max_questions)
    from datasets import DatasetDict, load_from_disk

    from ..modeling_scaledown import ScaleDownForCausalLM

    if baseline not in (None, "prune"):
        raise ValueError(f"`baseline` must be 'prune' (or unset), got {baseline!r}.")
    model = ScaleDownForCausalLM.from_pretrained(model_path)
    dataset = load_from_disk(str(data_dir))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"{data_dir} has no split {split!r} (has {list(dataset)}).")
        dataset = dataset[split]
    if max_questions is not None:
        dataset = dataset.select(range(min(max_questions, len(dataset))))
    pruner = None
    if baseline == "prune":
        from .pruning import SentencePruner

        pruner = SentencePruner.for_model(model, encoder=sentence_encoder, rate=prune_rate)
    offline = ScaleDownForCausalLM.from_pretrained(offline_model) if offline_model is not None else None
    report = evaluate_model(model, dataset.to_list(), pruner=pruner, offline_model=offline, **kwargs)
    report["model"] = str(model_path)
    if offline_model is not None:
        report["offline_model"] = str(offline_model)
    report["data"] = {"path": str(data_dir), "split": split}
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2))
    return report


def summary_lines(report: dict) -> list[str]:
    """An evaluation report as markdown lines ([`scaledown.report.evaluation_markdown`])."""
    from ..report import evaluation_markdown

    return evaluation_markdown(report).splitlines()
