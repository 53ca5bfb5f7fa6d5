"""Which question-answering phase makes the compressed model *answer* (Match), not only read (gain share)?

The demo trains in two phases: an auto-encoding warm-up that makes the memory path carry the documents, then question
answering. This script runs the second phase alone, with one set of settings, from a saved warm-up folder (made once
with `--warm-up-steps N --save-warm-up DIR`, exactly as `scaledown demo` does it), and scores held-out Match with
the top-k documents against the base generator reading them raw, paired on the same questions. Select designs on a
question set that is *not* the demo's held-out split (e.g. the independent questions of
`docs/results/independent-80-ids.json`), so that the demo's own figure stays an honest check.

    # once: the demo's warm-up (100 steps on the training split's documents), saved
    python benchmarks/answer_match.py --data outputs/demo/data-labelled --warm-up-steps 100 \
        --save-warm-up outputs/answer-match/warm-up --name warm-up --steps 0 --eval-data none
    # one design of the question-answering phase, scored on independent questions
    python benchmarks/answer_match.py --data outputs/demo/data-labelled --model outputs/answer-match/warm-up \
        --eval-data outputs/indep80 --name mix0 --autoencoding-mix 0

`--save DIR --save-at 150 300` also keeps the model at those steps (`DIR-step150`, ...): with the constant learning
rate, one longer run gives the shorter runs' models too. Every run is appended with its exact command to `--record`
(default `docs/results/answer-match.json`).
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
from scaledown.evaluation.run import evaluate_model, paired_match
from scaledown.offline_weights import smollm2_path
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Labelled folder (train split) of `scaledown demo`.")
    parser.add_argument("--eval-data", required=True, help="Folder with a test split to score, or `none`.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", default=None, help="Start from this ScaleDown folder (default: a fresh model).")
    parser.add_argument("--memory-slots", default="chunk_attention", help="Memory slots of a fresh model.")
    parser.add_argument("--selector-data", default=None, help="Folder whose train split fits the span selector.")
    parser.add_argument("--selector-epochs", type=int, default=8)
    parser.add_argument("--span-windows", type=int, default=None, help="Set the model's `span_windows` (span slots).")
    parser.add_argument("--warm-up-steps", type=int, default=0, help="Auto-encoding warm-up first (the demo's).")
    parser.add_argument("--save-warm-up", default=None, help="Save the model after the warm-up here.")
    parser.add_argument("--warm-up-learning-rates", type=float, nargs=2, default=(5e-4, 2e-4))
    parser.add_argument("--steps", type=int, default=150, help="Question-answering steps.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate-generator", type=float, default=1e-4)
    parser.add_argument("--learning-rate-compressor", type=float, default=5e-5)
    parser.add_argument("--autoencoding-mix", type=float, default=0.5)
    parser.add_argument("--autoencoding-loss-weight", type=float, default=1.0)
    parser.add_argument("--num-train-documents", type=int, default=1)
    parser.add_argument("--answer-field", default="gold_answers")
    parser.add_argument("--no-answer-document-first", action="store_true")
    parser.add_argument("--train-compressor", action="store_true", help="Let the compressor move in this phase.")
    parser.add_argument("--kl-weight", type=float, default=0.0)
    parser.add_argument("--eval-documents", type=int, default=10)
    parser.add_argument("--eval-questions", type=int, default=80)
    parser.add_argument("--baseline-cache", default="outputs/answer-match/baselines.json")
    parser.add_argument("--save", default=None, help="Save the trained model here.")
    parser.add_argument(
        "--save-at", type=int, nargs="*", default=(), help="Also save the model at these steps, as SAVE-stepN."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", default="docs/results/answer-match.json")
    options = parser.parse_args(argv)
    if options.save_at and not options.save:
        parser.error("--save-at needs --save (the folder prefix)")  # before minutes of selector fitting
    return options


def arguments(options, folder: str, **phase) -> ScaleDownTrainingArguments:
    return ScaleDownTrainingArguments(
        output_dir=f"outputs/answer-match/{options.name}-{folder}",
        per_device_train_batch_size=options.batch_size,
        save_strategy="no",
        seed=options.seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        logging_steps=10,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        **phase,
    )


class SaveAtSteps(TrainerCallback):
    """Saves the model at chosen global steps (the learning rate is constant, so step N of a longer run is the
    model a run of N steps would end with)."""

    def __init__(self, model, folder: str, steps):
        self.model, self.folder, self.steps = model, folder, set(steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            self.model.save_pretrained(f"{self.folder}-step{state.global_step}")


def main(argv=None):
    options = parse(argv)
    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    set_seed(options.seed)
    if options.model:
        model = ScaleDownForCausalLM.from_pretrained(options.model)
    else:
        model = ScaleDownForCausalLM.from_generator(
            str(smollm2_path()), num_compressor_layers=5, memory_injection_layer=5, memory_slots=options.memory_slots
        )
    if options.span_windows is not None:
        model.config.span_windows = options.span_windows
    train = load_from_disk(options.data)["train"]
    run = {"name": options.name, "command": command, "settings": vars(options)}
    if options.selector_data:
        from scaledown.training.selection import train_slot_selector

        start = time.perf_counter()
        selector_rows = load_from_disk(options.selector_data)["train"]
        run["selector"] = train_slot_selector(model, selector_rows, epochs=options.selector_epochs, seed=options.seed)
        run["selector_seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(run["selector"]))
    if options.warm_up_steps > 0:
        from scaledown.demo import DemoSettings, _warm_up

        settings = DemoSettings(
            warmup_steps=options.warm_up_steps,
            batch_size=options.batch_size,
            seed=options.seed,
            learning_rate_generator_warmup=options.warm_up_learning_rates[0],
            learning_rate_compressor_warmup=options.warm_up_learning_rates[1],
        )
        start = time.perf_counter()
        run["warm_up"] = _warm_up(model, train, settings, Path(f"outputs/answer-match/{options.name}"), True)
        run["warm_up_seconds"] = round(time.perf_counter() - start, 1)
        if options.save_warm_up:
            model.save_pretrained(options.save_warm_up)
    if options.steps > 0:
        set_seed(options.seed)
        args = arguments(
            options,
            "qa",
            max_steps=options.steps,
            learning_rate_generator=options.learning_rate_generator,
            learning_rate_compressor=options.learning_rate_compressor,
            autoencoding_mix=options.autoencoding_mix,
            autoencoding_loss_weight=options.autoencoding_loss_weight,
            num_train_documents=options.num_train_documents,
            answer_field=options.answer_field,
            answer_document_first=not options.no_answer_document_first,
            freeze_compressor=not options.train_compressor,
            raw_document_teacher=options.kl_weight > 0,
            kl_weight=options.kl_weight,
        )
        trainer = ScaleDownTrainer(model=model, args=args, train_dataset=train)
        if options.save_at:
            trainer.add_callback(SaveAtSteps(model, options.save, options.save_at))
        start = time.perf_counter()
        result = trainer.train()
        run["train_seconds"] = round(time.perf_counter() - start, 1)
        run["train_loss"] = result.training_loss
        run["log_history"] = trainer.state.log_history
    model.eval()
    if options.save:
        model.save_pretrained(options.save)
    if options.eval_data != "none":
        rows = load_from_disk(options.eval_data)["test"].to_list()[: options.eval_questions]
        cache = Path(options.baseline_cache)
        key = f"{Path(options.eval_data).resolve()}:{options.eval_questions}:{options.eval_documents}"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        start = time.perf_counter()
        report = evaluate_model(
            model, rows, num_documents=options.eval_documents, with_baseline=key not in cached, max_new_tokens=32
        )
        run["eval_seconds"] = round(time.perf_counter() - start, 1)
        if key not in cached:
            cached[key] = [r["uncompressed_match"] for r in report["records"]]
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(cached))
        compressed = [r["compressed_match"] for r in report["records"]]
        run["match"] = sum(compressed) / len(compressed)
        run["uncompressed_match"] = sum(cached[key]) / len(cached[key])
        run["paired"] = paired_match(compressed, cached[key])
        run["answers"] = [(r["question"], r["compressed"], r["compressed_match"]) for r in report["records"]]
        print(f"{options.name}: Match {run['match']:.4f} vs uncompressed {run['uncompressed_match']:.4f}")
    path = Path(options.record)
    record = json.loads(path.read_text()) if path.exists() else {"runs": []}
    record["runs"] = [r for r in record["runs"] if r["name"] != run["name"]] + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
