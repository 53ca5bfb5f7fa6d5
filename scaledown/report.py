"""Reports: one model of what a run measured, rendered to markdown in one place.

An evaluation report (`scaledown.evaluation.run.evaluate_model`, optionally with a benchmark report of
`scaledown.evaluation.benchmark`) is turned into markdown here, and only here: `scaledown evaluate` prints it, the
demo's `report.md` and the Hub model card embed it. The systems compared side by side are the uncompressed base
generator (raw documents), the sentence-pruning baseline (`pruned`, when run), and ScaleDown (`compressed`: online,
and `offline` when a query-independent model was evaluated on the same rows).
"""

import json
from pathlib import Path


def _fmt(value, digits=4):
    """A figure for a table: rounded to `digits` decimals without trailing zeros; "—" when missing."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"
    return str(value)


def _header(columns: list[str]) -> list[str]:
    """The two header lines of a markdown table."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


# Systems of an evaluation report, in table order: key -> label.
SYSTEMS = {
    "uncompressed": "uncompressed base generator (raw documents)",
    "pruned": "sentence pruning + base generator (a Provence/LLMLingua-style baseline built here)",
    "compressed": "ScaleDown (online compression)",
    "offline": "ScaleDown (offline compression, stored vectors)",
}


def _paired_key(system: str) -> str | None:
    """The paired-Match entry of `system` against the uncompressed generator in an evaluation report."""
    return {"compressed": "paired", "pruned": "paired_pruned", "offline": "paired_offline"}.get(system)


def data_sentence(data, args: dict | None = None) -> str:
    """What the run recorded about its data (`scaledown_data.json` of prepare-data/label), and nothing else."""
    if not isinstance(data, dict) or not data:
        return "The run recorded no description of its data."
    questions = data.get("questions") or {}
    parts = [f"Data: {', '.join(map(str, data['sources']))}" if data.get("sources") else "Data"]
    if questions:
        parts.append(", ".join(f"{n} {split} questions" for split, n in questions.items()))
    if data.get("split"):
        parts.append(f"split {data['split']}")
    if data.get("retriever"):
        top_k = data.get("top_k") or {}
        counts = "/".join(f"{top_k[s]} ({s})" for s in ("train", "test") if s in top_k)
        counts = counts or (args or {}).get("num_train_documents", "?")
        parts.append(f"{data['retriever']} top-{counts} of {data.get('doc_max_length', '?')}-token chunks")
    if data.get("teacher"):
        parts.append(f"teacher `{data['teacher']}`")
    return "; ".join(parts) + "."


def systems_table(report: dict, before: dict | None = None, labels: dict | None = None) -> list[str]:
    """Markdown table of every system in the evaluation `report`: Match (and its paired difference to the
    uncompressed generator, ± standard error), EM, F1, ROUGE-L, teacher fidelity and answering seconds. `before` (a
    report of the untrained model on the same rows) adds its ScaleDown row."""
    labels = {**SYSTEMS, **(labels or {})}
    lines = _header(
        ["system", "Match", "Match − uncompressed (paired)", "EM", "F1", "ROUGE-L", "teacher ROUGE-L", "answer s"]
    )
    rows = [(labels["uncompressed"], report, "uncompressed")]
    if "uncompressed" not in report and before and "uncompressed" in before:
        rows = [(labels["uncompressed"], before, "uncompressed")]
    rows += [(labels["pruned"], report, "pruned")]
    if before:
        rows += [("ScaleDown before training", before, "compressed")]
    rows += [(labels["compressed"], report, "compressed"), (labels["offline"], report, "offline")]
    for label, source, system in rows:
        if system not in source:
            continue
        gold, fidelity = source[system].get("gold", {}), source[system].get("teacher_fidelity", {})
        paired = source.get(_paired_key(system) or "", None)
        difference = (
            f"{_fmt(paired['match_difference'])} ± {_fmt(paired['match_difference_stderr'])}" if paired else "—"
        )
        seconds = source.get("timings", {}).get(f"{system}_seconds")
        lines.append(
            f"| {label} | {_fmt(gold.get('match'))} | {difference} | {_fmt(gold.get('exact_match'))} | "
            f"{_fmt(gold.get('f1'))} | {_fmt(gold.get('rouge_l'))} | {_fmt(fidelity.get('rouge_l'))} | "
            f"{_fmt(seconds, 1)} |"
        )
    return lines


def document_gain_lines(gain: dict | None) -> list[str]:
    """The document-gain sentence of an evaluation report (does the generator read its memory?)."""
    if not gain:
        return []
    compressed, raw = gain.get("compressed", {}), gain.get("uncompressed", {})
    text = (
        f"Does the generator read its memory? Document gain (gold-answer NLL with another question's documents minus "
        f"with its own, top {gain.get('num_documents')}, {gain.get('questions')} questions): "
        f"{_fmt(compressed.get('document_gain'))} ± {_fmt(compressed.get('document_gain_stderr'))} nats/token "
        "through the memory"
    )
    if raw:
        text += (
            f", {_fmt(raw.get('document_gain'))} ± {_fmt(raw.get('document_gain_stderr'))} for the base generator "
            f"reading the raw documents: **gain share {_fmt(gain.get('gain_share'))}** (1 = the memory serves as "
            "well as the text)"
        )
    return [text + "."]


def documents_table(by_documents: dict) -> list[str]:
    """Markdown table of paired Match by the number of top documents read (the demo's `by_documents`)."""
    lines = [
        "Match by the number of top documents read (compressed and raw alike, paired on the same questions):",
        "",
        *_header(["documents", "ScaleDown Match", "uncompressed Match", "ratio", "Match − uncompressed (paired)"]),
    ]
    for count, row in by_documents.items():
        paired = row["paired"]
        difference = f"{_fmt(paired['match_difference'])} ± {_fmt(paired['match_difference_stderr'])}"
        lines.append(
            f"| {count} | {_fmt(row['match'])} | {_fmt(row['uncompressed_match'])} | {_fmt(row['ratio'])} | "
            f"{difference} |"
        )
    return lines


def benchmark_table(bench: dict | None, hardware: str | None = None) -> list[str]:
    """Markdown table of a benchmark report: per batch size, the seconds of each system, the speed-up over the
    uncompressed generator, the analytic FLOPs ratio and the peak memory."""
    if not bench:
        return []
    s = bench["settings"]
    extra = [k for k in ("pruned", "offline") if any(f"{k}_seconds" in r for r in bench["per_batch_size"].values())]
    columns = ["batch", "uncompressed s", "ScaleDown s (compressor + generator)", "speed-up", "FLOPs ratio"]
    columns += [c for key in extra for c in (f"{key} s", f"{key} speed-up")]
    with_memory = any("peak_memory_mib" in r for r in bench["per_batch_size"].values())
    columns += ["peak memory ScaleDown / uncompressed (MiB)"] if with_memory else []
    lines = [
        f"{s['num_documents']} documents × {s['doc_tokens']} tokens, {s['query_tokens']}-token query, "
        f"{s['new_tokens']} new tokens, {hardware or s['device']} ({s['dtype']}), medians of "
        f"{s.get('repetitions', '?')} interleaved repetitions.",
        "",
        *_header(columns),
    ]
    for batch, r in bench["per_batch_size"].items():
        memory = r.get("peak_memory_mib", {})
        stages = (
            f" ({_fmt(r['compressor_seconds'], 2)} + {_fmt(r.get('generator_seconds'), 2)})"
            if "compressor_seconds" in r
            else ""
        )
        parts = (
            f"| {batch} | {_fmt(r['uncompressed_seconds'], 2)} | {_fmt(r['compressed_seconds'], 2)}{stages} | "
            f"{_fmt(r['speedup'], 2)}× | {_fmt(r.get('flops_ratio_analytic'), 2)}× |"
        )
        for key in extra:
            seconds = r.get(f"{key}_seconds")
            ratio = r["uncompressed_seconds"] / seconds if seconds else None
            parts += f" {_fmt(seconds, 2)} | {_fmt(ratio, 2)}× |"
        if with_memory:
            parts += f" {_fmt(memory.get('compressed'), 0)} / {_fmt(memory.get('uncompressed'), 0)} |"
        lines.append(parts)
    return lines


def user_benchmark_markdown(result: dict) -> str:
    """The user-path benchmark (`scaledown benchmark --path user`) as markdown: per dtype and batch size, the
    seconds of a full answer per system, the speed-ups over the uncompressed generator next to their analytic FLOPs
    limits, the ceiling that decoding alone sets, the time-to-first-token speed-up, and peak memory."""
    s = result["settings"]
    lines = [
        f"{s['num_documents']} documents × {s.get('doc_tokens')} tokens, {s['query_tokens']}-token query, exactly "
        f"{s['new_tokens']} new tokens, {s['device']} ({s.get('threads')} threads), medians of {s['repetitions']} "
        "interleaved repetitions; speed-up = uncompressed seconds / system seconds (analytic FLOPs ratio in "
        "brackets).",
        "",
    ]
    names = {
        "offline": "offline, stored vectors",
        "offline_with_compression": "offline, compressing first",
        "pruned": "sentence pruning",
    }
    for dtype, per_batch in result["per_dtype"].items():
        extra = [n for n in names if any(f"{n}_seconds" in e for e in per_batch.values())]
        columns = ["dtype", "batch", "uncompressed s", "ScaleDown s", "ScaleDown speed-up", "decode-bound ceiling"]
        columns += ["first token speed-up"]
        columns += [f"{names[name]} speed-up" for name in extra] + ["peak memory ScaleDown / uncompressed"]
        lines += _header(columns)
        for batch, e in per_batch.items():
            memory = e.get("peak_memory_mib", {})
            row = (
                f"| {dtype} | {batch} | {_fmt(e['uncompressed_seconds'], 2)} | {_fmt(e['compressed_seconds'], 2)} | "
                f"{_fmt(e['speedup'], 2)}× ({_fmt(e.get('flops_ratio_analytic'), 2)}×) | "
                f"{_fmt(e.get('decode_bound'), 2)}× | {_fmt(e.get('first_token_speedup'), 2)}× |"
            )
            for name in extra:
                row += f" {_fmt(e.get(f'{name}_speedup'), 2)}× ({_fmt(e.get(f'{name}_flops_ratio_analytic'), 2)}×) |"
            ratio = memory.get("ratio")
            row += f" {_fmt(ratio, 2) if ratio is not None else '—'} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def evaluation_markdown(report: dict, before: dict | None = None, benchmark: dict | None = None) -> str:
    """An evaluation report (and optionally the untrained model's on the same rows, and a benchmark) as markdown:
    what `scaledown evaluate` prints and the demo report and model card embed."""
    settings = report.get("settings", {})
    lines = [
        f"{report.get('questions')} held-out questions, {settings.get('num_documents')} retrieved documents each, the "
        f"same prompt and decoding for every system ({settings.get('max_new_tokens')} new tokens).",
        "",
        *systems_table(report, before),
    ]
    pruning = settings.get("pruning")
    if pruning:
        lines += [
            "",
            f"Pruning keeps, per document, the sentences most similar to the question under "
            f"`{pruning.get('sentence_encoder')}` up to {pruning.get('budget_tokens_per_document')} tokens.",
        ]
    gain = document_gain_lines(report.get("document_gain"))
    if gain:
        lines += ["", *gain]
    offline_gain = document_gain_lines(report.get("offline_document_gain"))
    if offline_gain:
        lines += ["", "Offline model: " + offline_gain[0]]
    if len(report.get("by_documents") or {}) > 1:
        lines += ["", *documents_table(report["by_documents"])]
    if "reranking" in report:
        lines += ["", f"Reranking agreement with the teacher: {json.dumps(report['reranking'])}."]
    if benchmark:
        lines += ["", *benchmark_table(benchmark)]
    return "\n".join(lines) + "\n"


def plot_training(log_history: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [h for h in log_history if "loss" in h and "step" in h]
    if not logs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [h["step"] for h in logs]
    axes[0].plot(steps, [h["loss"] for h in logs], label="total loss")
    if all("ce" in h for h in logs):
        axes[0].plot(steps, [h["ce"] for h in logs], label="answer CE")
    axes[0].set_xlabel("step")
    axes[0].set_title("Distillation loss")
    axes[0].legend()
    if all("rerank_mse" in h for h in logs):
        axes[1].plot(steps, [h["rerank_mse"] for h in logs], color="tab:red")
        axes[1].set_title("Reranking MSE (vs teacher scores)")
    else:
        axes[1].plot(steps, [h.get("learning_rate", 0) for h in logs], color="tab:grey")
        axes[1].set_title("Learning rate")
    axes[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_quality(before: dict, after: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["match", "exact_match", "f1", "rouge_l"]
    systems = [
        ("uncompressed base generator", before.get("uncompressed", {}).get("gold", {})),
        ("ScaleDown before training", before.get("compressed", {}).get("gold", {})),
        ("ScaleDown after training", after.get("compressed", {}).get("gold", {})),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(systems)
    for i, (label, values) in enumerate(systems):
        ax.bar(
            [m + i * width for m in range(len(metrics))], [values.get(k, 0) or 0 for k in metrics], width, label=label
        )
    ax.set_xticks([m + width for m in range(len(metrics))], ["Match", "EM", "F1", "ROUGE-L"])
    ax.set_ylim(0, 1)
    ax.set_title(f"Held-out answers vs gold ({before.get('questions')} questions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: dict, output_dir) -> Path:
    """Write `report.md`, `report.json` and the plots for a demo/training run into `output_dir`."""
    out = Path(output_dir)
    before, after, bench = run["eval_before"], run["eval_after"], run.get("benchmark", {})
    has_curve = plot_training(run["train"].get("log_history", []), out / "training.png")
    plot_quality(before, after, out / "quality.png")
    settings = run["settings"]
    lines = [
        "# ScaleDown run report",
        "",
        f"Generator `{run['generator']}`, compressor: {settings.get('num_compressor_layers')} generator layers, "
        f"hardware: {run.get('hardware')}. {data_sentence(run.get('data'), settings)}",
        "",
        "## Quality on the held-out split",
        "",
        *systems_table(after, before),
    ]
    lines += ["", *document_gain_lines(after.get("document_gain"))] if after.get("document_gain") else []
    lines += ["", *documents_table(after["by_documents"])] if len(after.get("by_documents") or {}) > 1 else []
    if "reranking" in after:
        lines += ["", f"Reranking agreement with the teacher after training: {json.dumps(after['reranking'])}."]
    lines += ["", "![quality](quality.png)", ""]
    selector = run.get("span_selector")
    if selector:
        hits = selector["window_hit_rate"]
        lines += [
            f"Span selector: fitted on {selector['pairs']} answer spans"
            + (f" of {selector['questions']} training questions" if "questions" in selector else "")
            + f" for {selector['epochs']} epochs; its chosen "
            f"window holds an answer token in {_fmt(hits['after'])} of "
            f"{selector['validation_pairs']} held-out training pairs (before fitting: {_fmt(hits['before'])}).",
            "",
        ]
    if has_curve:
        train = run["train"]
        lines += [
            "## Training",
            "",
            f"{train.get('train_runtime', 0):.0f} s, {train.get('train_samples_per_second', 0):.2f} examples/s, "
            f"final loss {train.get('train_loss', 0):.3f}.",
            "",
            "![training](training.png)",
            "",
        ]
    if bench:
        lines += ["## Speed and memory", "", *benchmark_table(bench, run.get("hardware"))]
        lines += ["", "![benchmark](benchmark/benchmark.png)", ""]
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run.get("timings_seconds", {}).items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(run, indent=2))
    return path
