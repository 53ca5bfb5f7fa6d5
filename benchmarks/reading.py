"""Does the generator read its memory? Train one memory design for a while and follow its held-out gain share.

Each run builds the demo's model (SmolLM2-135M-Instruct + an N-layers compressor, rate 16) with one memory path
(`--memory-injection-layer`, `--memory-slots`), trains it with `ScaleDownTrainer` on prepared SQuAD + SQuADShifts
rows (`scaledown prepare-data`, gold answers: no teacher labelling needed) with the chosen loss (cross-entropy, plus
optionally the raw-document teacher's KL and hidden states), and every `--eval-every` steps scores the document gain
(`scaledown.evaluation.likelihood.document_gain`) on held-out questions from unseen articles, with the top-1 and the
top-5 documents: the gold answer's NLL with a foreign question's documents minus with its own, for the compressed model
and for the base generator reading the raw documents; their ratio is the gain share (target R1: >= 0.5).

Each run is appended, with its exact command and every point, to `--record` (default `docs/results/reading.json`).

    python benchmarks/reading.py --data outputs/reading/squad-all --name oscar --steps 0
    python benchmarks/reading.py --data outputs/reading/squad-all --name r1-400 --steps 0 \
        --model outputs/smollm2-5l-squad/checkpoint-400 --start-step 400
    python benchmarks/reading.py --data outputs/reading/squad-all --name deep-kl --memory-injection-layer 5 \
        --memory-slots chunk_mean --kl-weight 1 --hidden-weight 1 --steps 600 --eval-every 100
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import TrainerCallback, set_seed

from scaledown import ScaleDownForCausalLM
from scaledown.evaluation.likelihood import document_gain
from scaledown.offline_weights import smollm2_path
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepare-data folder with train and test splits.")
    parser.add_argument("--name", required=True, help="Name of the run in the record.")
    parser.add_argument("--model", default=None, help="A ScaleDown folder to start from (default: a fresh one).")
    parser.add_argument(
        "--start-step", type=int, default=0, help="Steps the --model folder was already trained for (recorded)."
    )
    parser.add_argument("--num-compressor-layers", type=int, default=5)
    parser.add_argument("--memory-injection-layer", type=int, default=0)
    parser.add_argument("--memory-slots", default="tokens", choices=["tokens", "chunk_mean", "chunk_attention"])
    parser.add_argument("--no-lora", action="store_true", help="Keep the generator frozen (no LoRA adapters).")
    parser.add_argument("--answer-field", default="gold_answers")
    parser.add_argument("--train-documents", type=int, default=1)
    parser.add_argument("--eval-questions", type=int, default=80)
    parser.add_argument("--eval-documents", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate-generator", type=float, default=5e-4)
    parser.add_argument("--learning-rate-compressor", type=float, default=2e-4)
    parser.add_argument("--lr-scheduler", default="constant")
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    parser.add_argument("--kl-weight", type=float, default=0.0)
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument(
        "--autoencoding-steps",
        type=int,
        default=0,
        help="Warm-up steps of compressor pretraining (auto-encoding / continuation of the training rows' documents, "
        "scaledown.training.pretraining) before the question-answering steps; they count in the recorded steps.",
    )
    parser.add_argument("--autoencoding-ratio", type=float, default=0.5, help="Share of auto-encoding rows.")
    parser.add_argument(
        "--autoencoding-learning-rates",
        type=float,
        nargs=2,
        default=None,
        metavar=("GENERATOR", "COMPRESSOR"),
        help="Learning rates of the warm-up steps (default: the question-answering ones).",
    )
    parser.add_argument(
        "--autoencoding-mix",
        type=float,
        default=0.0,
        help="Share of question-answering rows turned into auto-encoding rows of their top document "
        "(`ScaleDownTrainingArguments.autoencoding_mix`).",
    )
    parser.add_argument(
        "--answer-document-first",
        action="store_true",
        help="Each training row's first answer-bearing document on top (`answer_document_first`).",
    )
    parser.add_argument(
        "--freeze-generator",
        action="store_true",
        help="Keep the generator's adapters fixed in the question-answering steps (`freeze_generator`).",
    )
    parser.add_argument(
        "--freeze-compressor",
        action="store_true",
        help="Keep the compressor side fixed in the question-answering steps (`freeze_compressor`).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="Save the trained model here.")
    parser.add_argument("--record", default="docs/results/reading.json")
    parser.add_argument(
        "--baseline-cache",
        default="outputs/reading/raw-baseline.json",
        help="The base generator's raw-document scores, reused across runs on the same held-out rows.",
    )
    return parser.parse_args(argv)


def record_run(path: Path, run: dict) -> None:
    """Replace the run of the same name in the record file (or add it), keeping every other run."""
    record = json.loads(path.read_text()) if path.exists() else {"runs": []}
    record["runs"] = [r for r in record["runs"] if r["name"] != run["name"]] + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def training_arguments(options, folder: str, steps: int, **overrides) -> ScaleDownTrainingArguments:
    """What every phase of a reading run shares (batch, learning rates, seed, CPU, no saving), plus its own."""
    settings = {
        "learning_rate_generator": options.learning_rate_generator,
        "learning_rate_compressor": options.learning_rate_compressor,
        **overrides,
    }
    return ScaleDownTrainingArguments(
        output_dir=f"outputs/reading/{options.name}-{folder}",
        max_steps=steps,
        per_device_train_batch_size=options.batch_size,
        logging_steps=10,
        save_strategy="no",
        seed=options.seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        **settings,
    )


def warm_up(model, options, train) -> None:
    """Compressor pretraining on the documents of the training rows (as `scaledown pretrain` does), same learning
    rates, constant schedule."""
    from datasets import Dataset

    from scaledown.training.pretraining import PretrainingCollator, make_pretraining_rows

    needed = options.autoencoding_steps * options.batch_size
    texts = list(dict.fromkeys(d for docs in train.select(range(min(len(train), needed)))["documents"] for d in docs))
    tokenizer, length = model.compressor_tokenizer, model.config.doc_max_length
    rows = make_pretraining_rows(
        texts, tokenizer, length, autoencoding_ratio=options.autoencoding_ratio, seed=options.seed
    )
    rows = rows[:needed]
    rates = {}
    if options.autoencoding_learning_rates:
        generator_rate, compressor_rate = options.autoencoding_learning_rates
        rates = {"learning_rate_generator": generator_rate, "learning_rate_compressor": compressor_rate}
    args = training_arguments(options, "warm-up", options.autoencoding_steps, lr_scheduler_type="constant",
                              warmup_ratio=0.0, **rates)  # fmt: skip
    collator = PretrainingCollator.from_model(model)
    ScaleDownTrainer(model=model, args=args, data_collator=collator, train_dataset=Dataset.from_list(rows)).train()


def main(argv=None):
    options = parse(argv)
    set_seed(options.seed)
    torch.manual_seed(options.seed)
    if options.model:
        model = ScaleDownForCausalLM.from_pretrained(options.model)
        # The folder's own memory path is what is measured: record it, not this script's defaults.
        options.num_compressor_layers = model.config.num_compressor_layers
        options.memory_injection_layer = model.config.memory_injection_layer
        options.memory_slots = model.config.memory_slots
    else:
        model = ScaleDownForCausalLM.from_generator(
            str(smollm2_path()),
            num_compressor_layers=options.num_compressor_layers,
            memory_injection_layer=options.memory_injection_layer,
            memory_slots=options.memory_slots,
            use_lora=not options.no_lora,
        )
    data = load_from_disk(options.data)
    held_out = data["test"].to_list()[: options.eval_questions]
    train = data["train"].shuffle(seed=options.seed)
    train = train.select(range(min(len(train), max(options.steps, 1) * options.batch_size)))
    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    run = {"name": options.name, "command": command, "settings": vars(options), "points": []}
    cache = Path(options.baseline_cache)
    cache_key = f"{Path(options.data).resolve()}:{options.eval_questions}"
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    baselines = {int(k): v for k, v in cached.get(cache_key, {}).items()}
    record = Path(options.record)

    def measure(step: int, seconds: float, final: bool = False):
        first_point = step == 0
        step += options.start_step
        point = {"step": step, "examples_seen": step * options.batch_size, "train_seconds": round(seconds, 1)}
        for k in options.eval_documents:
            if k != options.eval_documents[0] and not (first_point or final):
                continue  # the extra document counts at the start and the end only
            report = document_gain(model, held_out, k, baseline=baselines.get(k))
            if k not in baselines:
                baselines[k] = report["uncompressed"]
                cached[cache_key] = baselines
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(cached, indent=2))
            point[f"top{k}"] = {
                "compressed_gain": report["compressed"]["document_gain"],
                "compressed_gain_stderr": report["compressed"]["document_gain_stderr"],
                "raw_gain": report["uncompressed"]["document_gain"],
                "gain_share": report.get("gain_share"),
                "nll_own_documents": report["compressed"]["nll_own_documents"],
            }
        run["points"].append(point)
        print(json.dumps(point), flush=True)
        record_run(record, run)

    class Measure(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.began, self.evaluating = time.perf_counter(), 0.0

        def on_step_end(self, args, state, control, **kwargs):
            final = state.global_step == state.max_steps
            if state.global_step % options.eval_every == 0 or final:
                start = time.perf_counter()
                measure(state.global_step, start - self.began - self.evaluating, final)
                self.evaluating += time.perf_counter() - start

    measure(0, 0.0)
    if options.autoencoding_steps > 0:
        warm_up(model, options, train)
        options.start_step += options.autoencoding_steps
        measure(0, 0.0)
    if options.steps > 0:
        teacher = options.kl_weight > 0 or options.hidden_weight > 0
        args = training_arguments(
            options,
            "checkpoints",
            options.steps,
            lr_scheduler_type=options.lr_scheduler,
            warmup_ratio=options.warmup_ratio,
            num_train_documents=options.train_documents,
            answer_field=options.answer_field,
            raw_document_teacher=teacher,
            kl_weight=options.kl_weight,
            hidden_distillation_weight=options.hidden_weight,
            autoencoding_mix=options.autoencoding_mix,
            answer_document_first=options.answer_document_first,
            freeze_generator=options.freeze_generator,
            freeze_compressor=options.freeze_compressor,
        )
        trainer = ScaleDownTrainer(model=model, args=args, train_dataset=train, callbacks=[Measure()])
        trainer.train()
        run["log"] = [h for h in trainer.state.log_history if "loss" in h]
        record_run(record, run)
    if options.save:
        model.save_pretrained(options.save)


if __name__ == "__main__":
    main()
