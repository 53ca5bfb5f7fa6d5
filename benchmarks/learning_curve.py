"""Learning curve of the demo recipe: held-out Match of the compressed model against training length.

Same pipeline as `scaledown demo` (SmolLM2-135M-Instruct, 5-layer compressor, BM25 top-5 for training and top-10 for
evaluation over 128-token chunks, self-distillation from the base generator, MiniLM relevance teacher), on more
SQuAD questions and for longer. The uncompressed base generator is evaluated once on the held-out questions; the
compressed model is evaluated every `--eval-every` steps on the same questions with the same prompt and decoding, and
the pairwise Match difference is recorded. Results are rewritten after every evaluation (JSON + PNG), so a run that
is stopped early keeps its curve; teacher labels are journaled, so a rerun resumes labelling.

    python benchmarks/learning_curve.py --data ../shared/data/squad/squaddev_v1.1.json --max-steps 360
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainerCallback, set_seed

from scaledown import ScaleDownForCausalLM
from scaledown.evaluation.benchmark import SAMPLE
from scaledown.evaluation.likelihood import document_gain
from scaledown.evaluation.run import evaluate_model, paired_match
from scaledown.offline_weights import minilm_path, smollm2_path
from scaledown.training.arguments import ScaleDownTrainingArguments
from scaledown.training.data import prepare_data
from scaledown.training.labeling import label_dataset
from scaledown.training.trainer import ScaleDownTrainer


# The data recipe, shared by the first preparation and by `--extra-train-questions`.
HELD_OUT_FRACTION, TRAIN_TOP_K, EVAL_TOP_K, DOC_MAX_LENGTH = 0.2, 5, 10, 128


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SAMPLE), help="SQuAD-format file (default: the shipped sample).")
    parser.add_argument("--output-dir", default="outputs/learning-curve")
    parser.add_argument("--train-questions", type=int, default=480)
    parser.add_argument("--eval-questions", type=int, default=80)
    parser.add_argument("--max-steps", type=int, default=360)
    parser.add_argument("--eval-every", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate-generator", type=float, default=1e-4)
    parser.add_argument("--learning-rate-compressor", type=float, default=5e-5)
    parser.add_argument("--teacher-max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-document-gain",
        action="store_true",
        help="Skip the document gain (gold-answer likelihood with own vs foreign documents) at each point.",
    )
    parser.add_argument(
        "--extra-train-questions",
        type=int,
        default=0,
        help="Extend an existing run folder: add this many fresh training questions (training articles, none already "
        "in its training split), label only those, and train on all; the held-out questions stay the same.",
    )
    return parser.parse_args()


def extend_training_data(out: Path, labelled, options, tokenizer, label):
    """`labelled` with `options.extra_train_questions` more labelled training questions drawn from the training
    articles of `options.data` (none already used); the new questions are prepared and labelled in their own folders,
    so an interrupted extension resumes."""
    from datasets import Dataset, DatasetDict, concatenate_datasets

    from scaledown.training.data import build_split, read_source, save_dataset_atomically, split_by_article

    folder = out / f"data-extra-{options.extra_train_questions}"
    if not (folder / "dataset_dict.json").exists():
        train, _ = split_by_article(read_source(f"squad:{options.data}"), HELD_OUT_FRACTION, options.seed)
        used = set(labelled["train"]["id"])
        pool = [r for r in train if r.id not in used]
        if len(pool) < options.extra_train_questions:
            raise ValueError(f"Only {len(pool)} unused training questions, {options.extra_train_questions} asked.")
        questions = random.Random(f"{options.seed}:extra").sample(pool, options.extra_train_questions)
        rows = build_split(questions, tokenizer, DOC_MAX_LENGTH, TRAIN_TOP_K, collection=train)
        save_dataset_atomically(DatasetDict({"train": Dataset.from_list(rows)}), folder)
    extra = label(folder, folder.with_name(folder.name + "-labelled"))
    labelled["train"] = concatenate_datasets([labelled["train"], extra["train"]])
    return labelled


class CurveCallback(TrainerCallback):
    """Evaluates the compressed model on the held-out rows every `every` steps and rewrites the results."""

    def __init__(self, model, rows, baseline, every, write, gain_baseline=None):
        self.model, self.rows, self.baseline, self.every, self.write = model, rows, baseline, every, write
        self.gain_baseline = gain_baseline  # the uncompressed document gain, scored once
        self.points = []
        self.started = time.perf_counter()

    def evaluate(self, step: int, train_seconds: float):
        report = evaluate_model(
            self.model, self.rows, num_documents=EVAL_TOP_K, with_baseline=False, max_new_tokens=32
        )
        compressed = _matches(report["records"])
        point = {
            "step": step,
            "examples_seen": None,
            "train_seconds": round(train_seconds, 1),
            "match": report["compressed"]["gold"]["match"],
            "f1": report["compressed"]["gold"]["f1"],
            # The teacher is the base generator: its answers are the uncompressed baseline's (when recorded).
            "teacher_rouge_l": report["compressed"]["teacher_fidelity"].get("rouge_l"),
            "paired": paired_match(compressed, self.baseline),
        }
        if self.gain_baseline is not None:
            gain = document_gain(self.model, self.rows, EVAL_TOP_K, baseline=self.gain_baseline)
            point["document_gain"] = gain["compressed"]
            point["gain_share"] = gain.get("gain_share")
        self.points.append(point)
        self.model.train()
        return point

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            seconds = time.perf_counter() - self.started - sum(p.get("eval_seconds", 0) for p in self.points)
            began = time.perf_counter()
            point = self.evaluate(state.global_step, seconds)
            point["examples_seen"] = state.global_step * args.per_device_train_batch_size
            point["eval_seconds"] = round(time.perf_counter() - began, 1)
            point["loss"] = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
            self.write(self.points)


def _matches(records):
    return [r["compressed_match"] for r in records if r["gold_answers"]]


def plot(points, baseline_match, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_gain = any(p.get("gain_share") is not None for p in points)
    fig, axes = plt.subplots(1, 2 if with_gain else 1, figsize=(11 if with_gain else 6, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot([p["examples_seen"] for p in points], [p["match"] for p in points], "o-", label="ScaleDown (compressed)")
    ax.axhline(baseline_match, color="grey", linestyle="--", label="uncompressed base generator")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("held-out Match")
    ax.legend()
    if with_gain:
        ax = axes[0][1]
        kept = [p for p in points if p.get("gain_share") is not None]
        ax.plot([p["examples_seen"] for p in kept], [p["gain_share"] for p in kept], "o-", color="C1")
        ax.axhline(1.0, color="grey", linestyle="--", label="raw documents (uncompressed)")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xlabel("training examples seen")
        ax.set_ylabel("document gain share")
        ax.set_title("gold-answer NLL drop from own vs foreign documents", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(options.seed)
    generator = str(smollm2_path())
    tokenizer = AutoTokenizer.from_pretrained(generator)
    if not (out / "data").exists():
        prepare_data(
            [f"squad:{options.data}"],
            tokenizer,
            out / "data",
            doc_max_length=DOC_MAX_LENGTH,
            num_train_documents=TRAIN_TOP_K,
            num_eval_documents=EVAL_TOP_K,
            held_out_fraction=HELD_OUT_FRACTION,
            max_train_questions=options.train_questions,
            max_eval_questions=options.eval_questions,
            seed=options.seed,
        )
    model = ScaleDownForCausalLM.from_generator(generator, num_compressor_layers=5, enable_reranking=True)

    def label(source, target):
        if (target / "dataset_dict.json").exists():  # labelled by an earlier run
            from datasets import load_from_disk

            return load_from_disk(str(target))
        return label_dataset(
            source,
            target,
            model.generator,
            teacher_tokenizer=tokenizer,
            config=model.config,
            bi_encoder=str(minilm_path()),
            max_new_tokens=options.teacher_max_new_tokens,
            with_answers=["train"],
        )

    began = time.perf_counter()
    labelled = label(out / "data", out / "data-labelled")
    if options.extra_train_questions:
        labelled = extend_training_data(out, labelled, options, tokenizer, label)
    label_seconds = time.perf_counter() - began
    rows = labelled["test"].to_list()
    baseline_file = out / "baseline.json"
    if baseline_file.exists():
        baseline = json.loads(baseline_file.read_text())
    else:
        report = evaluate_model(model, rows, num_documents=EVAL_TOP_K, with_baseline=True, max_new_tokens=32)
        baseline = {
            "match": report["uncompressed"]["gold"]["match"],
            "matches": [r["uncompressed_match"] for r in report["records"] if r["gold_answers"]],
            "before_training_match": report["compressed"]["gold"]["match"],
            "answers": [r["uncompressed"] for r in report["records"]],
        }
        baseline_file.write_text(json.dumps(baseline))
    if not options.no_document_gain and "document_gain" not in baseline:
        baseline["document_gain"] = document_gain(model, rows, EVAL_TOP_K)  # before training
        baseline_file.write_text(json.dumps(baseline))

    for row, answer in zip(rows, baseline.get("answers", [])):
        row["teacher_answer"] = answer

    def write(points):
        result = {
            "settings": vars(options),
            "data": {split: len(labelled[split]) for split in labelled},
            "label_seconds": round(label_seconds, 1),
            "uncompressed_match": baseline["match"],
            "compressed_match_before_training": baseline["before_training_match"],
            "document_gain_before_training": baseline.get("document_gain"),
            "points": points,
        }
        (out / "learning_curve.json").write_text(json.dumps(result, indent=2))
        plot(points, baseline["match"], out / "learning_curve.png")

    args = ScaleDownTrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        learning_rate_generator=options.learning_rate_generator,
        learning_rate_compressor=options.learning_rate_compressor,
        num_train_documents=TRAIN_TOP_K,
        logging_steps=10,
        save_strategy="no",
        seed=options.seed,
        use_cpu=True,
        disable_tqdm=False,
    )
    gain_baseline = None if options.no_document_gain else baseline["document_gain"]["uncompressed"]
    callback = CurveCallback(model, rows, baseline["matches"], options.eval_every, write, gain_baseline)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=labelled["train"], callbacks=[callback])
    trainer.train()
    print(json.dumps(callback.points, indent=2))


if __name__ == "__main__":
    main()
