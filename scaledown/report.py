"""Run report: `report.md` + `report.json` + PNG plots (training curves, before/after metrics, speed and memory)."""

import json
from pathlib import Path


def _fmt(value, digits=3):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


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
        f"hardware: {run.get('hardware')}. Data: {run['data']} questions (train / held-out split by article).",
        "",
        "## Quality on the held-out split",
        "",
        "Same questions, same retrieved documents, same prompt, greedy decoding; the uncompressed system is the base "
        "generator reading the raw documents.",
        "",
        "| system | Match | EM | F1 | ROUGE-L | teacher ROUGE-L | teacher F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, report, system in (
        ("uncompressed base generator", before, "uncompressed"),
        ("ScaleDown before training", before, "compressed"),
        ("ScaleDown after training", after, "compressed"),
    ):
        gold = report.get(system, {}).get("gold", {})
        fidelity = report.get(system, {}).get("teacher_fidelity", {})
        lines.append(
            f"| {label} | {_fmt(gold.get('match'))} | {_fmt(gold.get('exact_match'))} | {_fmt(gold.get('f1'))} | "
            f"{_fmt(gold.get('rouge_l'))} | {_fmt(fidelity.get('rouge_l'))} | {_fmt(fidelity.get('f1'))} |"
        )
    paired = after.get("paired")
    if paired:
        lines += [
            "",
            f"Pairwise Match (after training − uncompressed): {_fmt(paired['match_difference'])} "
            f"± {_fmt(paired['match_difference_stderr'])} (standard error) over {paired['questions']} questions; "
            f"{paired['compressed_only']} questions only ScaleDown answers, {paired['uncompressed_only']} only the "
            f"uncompressed generator.",
        ]
    gain = after.get("document_gain")
    if gain:
        share = gain.get("gain_share")
        lines += [
            "",
            f"Does the generator read its memory? Document gain (gold-answer NLL with another question's documents "
            f"minus with its own, top {gain['num_documents']}, {gain['questions']} questions): "
            f"{_fmt(gain['compressed']['document_gain'])} ± {_fmt(gain['compressed']['document_gain_stderr'])} "
            f"nats/token through the memory after training, {_fmt(gain['uncompressed']['document_gain'])} ± "
            f"{_fmt(gain['uncompressed']['document_gain_stderr'])} for the base generator reading the raw documents: "
            f"**gain share {_fmt(share)}** (1 = the memory serves as well as the text).",
        ]
    if "reranking" in after:
        r = after["reranking"]
        lines += ["", f"Reranking agreement with the teacher after training: {json.dumps(r)}."]
    lines += ["", "![quality](quality.png)", ""]
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
        lines += [
            "## Speed and memory",
            "",
            f"{bench['settings']['num_documents']} documents × {bench['settings']['doc_tokens']} tokens, "
            f"{bench['settings']['query_tokens']}-token query, {bench['settings']['new_tokens']} new tokens, "
            f"{bench['settings']['device']} ({bench['settings']['dtype']}), medians of "
            f"{bench['settings']['repetitions']} interleaved repetitions.",
            "",
            "| batch | compressed s (compressor + generator) | uncompressed s | speed-up | FLOPs ratio | peak memory "
            "compressed / uncompressed (MiB) |",
            "|---|---|---|---|---|---|",
        ]
        for batch, r in bench["per_batch_size"].items():
            memory = r.get("peak_memory_mib", {})
            lines.append(
                f"| {batch} | {_fmt(r['compressed_seconds'], 2)} ({_fmt(r['compressor_seconds'], 2)} + "
                f"{_fmt(r['generator_seconds'], 2)}) | {_fmt(r['uncompressed_seconds'], 2)} | "
                f"{_fmt(r['speedup'], 2)}× | "
                f"{_fmt(r['flops_ratio_analytic'], 2)}× | {_fmt(memory.get('compressed'), 0)} / "
                f"{_fmt(memory.get('uncompressed'), 0)} |"
            )
        lines += ["", "![benchmark](benchmark/benchmark.png)", ""]
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run.get("timings_seconds", {}).items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(run, indent=2))
    return path
