"""Model card (`README.md` of a model folder) for a ScaleDown checkpoint, with `huggingface_hub`'s `ModelCard`,
`ModelCardData` and `EvalResult`. Every number comes from the run's report; a card without evaluation says so."""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_scaledown import DEFAULT_LORA_CONFIG, LORA_SHORTHANDS
from ..report import benchmark_table, data_sentence, evaluation_markdown


KNOWN_BASES = {
    # local folder name fragment -> (hub id, license)
    "SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}
KNOWN_LICENSES = {
    "mistralai/Mistral-7B-Instruct-v0.2": "apache-2.0",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
    "answerdotai/ModernBERT-base": "apache-2.0",
    "sentence-transformers/all-MiniLM-L6-v2": "apache-2.0",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3.2",
}
CITATION = """@article{louis2025oscar,
  title   = {OSCAR: Online Soft Compression And Reranking},
  author  = {Louis, Maxime and Formal, Thibault and D{\\'e}jean, Herv{\\'e} and Clinchant, St{\\'e}phane},
  journal = {arXiv preprint arXiv:2504.07109},
  year    = {2025}
}"""


_SLOTS = {
    "tokens": "hidden states at appended memory tokens (OSCAR)",
    "chunk_mean": "mean hidden state of each document chunk",
    "chunk_attention": "learned-attention pooling of each document chunk",
    "span": "hidden states of the document tokens a learned selector picks (consecutive, most answer-like; a lexical "
    "prior near the query's words when `span_lexical_weight` > 0)",
}


def _adapters(config: dict) -> str:
    """The generator's adapters as the saved configuration states them (`lora_config`, or the loose `lora_*` fields
    of earlier folders)."""
    if not config.get("use_lora", True):
        return "none (generator frozen)"
    lora = {**DEFAULT_LORA_CONFIG, **{LORA_SHORTHANDS[k]: v for k, v in config.items() if k in LORA_SHORTHANDS}}
    lora.update(config.get("lora_config") or {})
    return f"LoRA r{lora['r']} / α{lora['lora_alpha']} / dropout {lora['lora_dropout']}, {lora['target_modules']}"


def _injection(layer: int) -> str:
    if not layer:
        return "as input embeddings (OSCAR)"
    return f"in the residual stream at layer {layer}"


def hub_id(name_or_path: str | None) -> str | None:
    """The hub id behind a name or a local folder, when it can be known."""
    if not name_or_path:
        return None
    for fragment, (repo, _) in KNOWN_BASES.items():
        if fragment in str(name_or_path):
            return repo
    if os.path.isdir(name_or_path) or str(name_or_path).startswith(("/", ".", "~")):
        return None
    return str(name_or_path) if str(name_or_path).count("/") == 1 else None


def _eval_results(run: dict | None, dataset_name: str) -> list[EvalResult]:
    if not run or "eval_after" not in run:
        return []

    def result(metric_type: str, metric_name: str, value: float) -> EvalResult:
        return EvalResult(
            task_type="question-answering",
            dataset_type="squad",
            dataset_name=dataset_name,
            dataset_split="held-out articles",
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=value,
        )

    gold = run["eval_after"].get("compressed", {}).get("gold", {})
    names = {"match": "Match", "exact_match": "Exact match", "f1": "F1", "rouge_l": "ROUGE-L"}
    results = [
        result(key, name, round(float(gold[key]), 4)) for key, name in names.items() if gold.get(key) is not None
    ]
    hardware = run.get("hardware", "unknown")
    for batch, entry in (run.get("benchmark") or {}).get("per_batch_size", {}).items():
        name = f"Speed-up vs uncompressed generation (batch {batch}, {hardware})"
        results.append(result("speedup", name, round(float(entry["speedup"]), 3)))
    return results


def as_run_report(report: dict | None) -> dict | None:
    """A report the card can read: a run's (`run.json` of `scaledown demo`, or any dict with `eval_after`) as it is,
    or the evaluation report that `scaledown evaluate --output` writes (every system it compared: the uncompressed
    generator, the pruning baseline, the online and offline models) as that run's `eval_after`."""
    if report is None or "eval_after" in report:
        return report
    if "compressed" in report and "questions" in report:
        return {"eval_after": report}
    raise ValueError(
        "The report is neither a run's (`run.json` of `scaledown demo`: it has `eval_after`) nor an evaluation report "
        f"of `scaledown evaluate --output` (with `questions` and `compressed`); its keys: {sorted(report)}."
    )


def build_model_card(model_dir: str | os.PathLike, run: dict | None = None, repo_id: str | None = None) -> ModelCard:
    """Build the card of the ScaleDown folder `model_dir` from its `config.json` and, when given, a run report
    (`run.json` of `scaledown demo`, any dict with `eval_after`, `benchmark`, `training_arguments`, `train`, or an
    evaluation report of `scaledown evaluate --output`: see [`as_run_report`])."""
    model_dir = Path(model_dir)
    run = as_run_report(run)
    config = json.loads((model_dir / "config.json").read_text())
    generator = hub_id(config.get("generator_name_or_path"))
    compressor = hub_id(config.get("compressor_name_or_path")) if config.get("compressor_type") != "n_layers" else None
    base_models = [m for m in (generator, compressor) if m]
    license_ = next((KNOWN_LICENSES[m] for m in base_models if m in KNOWN_LICENSES), None)
    data = (run or {}).get("data") if isinstance((run or {}).get("data"), dict) else {}
    sources = data.get("sources") or []
    uses_squad = any("squad" in str(source).lower() for source in sources)
    dataset_name = f"{', '.join(sources)} (held-out articles)" if sources else "held-out questions"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_models or None,
        datasets=["rajpurkar/squad"] if uses_squad else None,
        license=license_ or "other",
        tags=["scaledown", "oscar", "rag", "context-compression", "custom_code"],
        model_name=repo_id or model_dir.name,
        eval_results=_eval_results(run, dataset_name) or None,
    )
    repo = repo_id or str(model_dir)
    body = _body(config, run, repo, generator or config.get("generator_name_or_path"))
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def _body(config: dict, run: dict | None, repo: str, generator: str) -> str:
    compressor = (
        f"the first {config['num_compressor_layers']} layers of the generator (a separate, fully trained copy"
        f"{', final norm kept' if config.get('compressor_keep_final_norm') else ', final norm dropped'})"
        if config["compressor_type"] == "n_layers"
        else f"`{config.get('compressor_name_or_path')}` ({config['compressor_type']}) + a 2-layer MLP projector"
    )
    lines = [
        f"# {Path(repo).name}",
        "",
        "A [ScaleDown](https://arxiv.org/abs/2504.07109) (OSCAR) retrieval-augmented generator built on "
        f"`{generator}`: "
        f"a compressor turns each retrieved document, read together with the query, into "
        f"{config['num_memory_tokens']} embeddings that the LoRA-tuned generator answers from"
        f"{', and scores its relevance on the way' if config.get('enable_reranking') else ''}. "
        f"Generation reads {config['compression_rate']}× fewer document tokens.",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)',
        "answers = model.generate_from_text(",
        '    ["Who wrote Hamlet?"],',
        '    [["Hamlet is a tragedy written by William Shakespeare around 1600."]],',
        "    max_new_tokens=32,",
        ")",
        "print(answers)",
        "```",
        "",
        "`model.compress_documents(questions, documents)` returns the compressed documents (and `.rerank_scores` when "
        "reranking is on) for `model.generate_from_compressed(questions, compressed)`.",
        "",
        "## Compression settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| compressor | {compressor} |",
        f"| document tokens → memory embeddings | {config['doc_max_length']} → {config['num_memory_tokens']} "
        f"(rate {config['compression_rate']}) |",
        f"| query tokens read by the compressor | {config['query_max_length']} |",
        f"| memory slots | {_SLOTS.get(config.get('memory_slots', 'tokens'))} |",
        f"| memory enters the generator | {_injection(config.get('memory_injection_layer', 0))} |",
        f"| generator adapters | {_adapters(config)} |",
        f"| reranking head | {'yes' if config.get('enable_reranking') else 'no'} |",
        "",
    ]
    lines += _training_section(run) + _evaluation_section(run)
    lines += [
        "## Limitations",
        "",
        "- Documents longer than the compressor's window are truncated; the answer quality follows the retriever's.",
        "- The model was distilled from a teacher's answers: it inherits the teacher's errors and style.",
        "- Loading needs `trust_remote_code=True` (the modeling code ships in this repository).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def _training_section(run: dict | None) -> list[str]:
    if not run or "training_arguments" not in run:
        return ["## Training", "", "No training run is recorded for this folder.", ""]
    args, train = run["training_arguments"], run.get("train", {})
    return [
        "## Training",
        "",
        "Sentence-level distillation (OSCAR): cross-entropy on the target answers "
        f"(`{args.get('answer_field', 'teacher_answer')}`) plus {args.get('reranking_loss_weight', 0.05)} × MSE of "
        "the relevance score against the teacher's"
        + (f", with {args['autoencoding_mix']:.0%} auto-encoding rows" if args.get("autoencoding_mix") else "")
        + f". {data_sentence(run.get('data'), args)}",
        "",
        "| hyper-parameter | value |",
        "|---|---|",
        f"| steps | {train.get('log_history', [{}])[-1].get('step', '—') if train.get('log_history') else '—'} |",
        f"| epochs | {args.get('num_train_epochs')} |",
        f"| batch size | {args.get('per_device_train_batch_size')} × {args.get('gradient_accumulation_steps')} |",
        f"| learning rates | generator {args.get('learning_rate_generator')}, compressor "
        f"{args.get('learning_rate_compressor')} |",
        f"| schedule | {args.get('lr_scheduler_type')}, warmup {args.get('warmup_ratio', args.get('warmup_steps'))} |",
        f"| weight decay | {args.get('weight_decay')} |",
        f"| hardware | {run.get('hardware', 'unknown')} |",
        "",
    ]


def _evaluation_section(run: dict | None) -> list[str]:
    if not run or "eval_after" not in run:
        return ["## Evaluation", "", "This model has not been evaluated yet: no figures are reported.", ""]
    after = dict(run["eval_after"])
    if "uncompressed" not in after and "uncompressed" in run.get("eval_before", {}):
        after["uncompressed"] = run["eval_before"]["uncompressed"]  # the base generator's answers, run once
    bench = run.get("benchmark")
    lines = ["## Evaluation", "", evaluation_markdown(after)]
    if bench:
        lines += ["### Speed", "", *benchmark_table(bench, run.get("hardware")), ""]
    return lines


def write_model_card(model_dir: str | os.PathLike, run: dict | None = None, repo_id: str | None = None) -> Path:
    """Write `README.md` (the card) into `model_dir`."""
    card = build_model_card(model_dir, run, repo_id)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path
