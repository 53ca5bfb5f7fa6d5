"""R3 on a lent GPU: does ScaleDown answer as well as the uncompressed generator once it has seen enough data?

One fixed-budget run, every stage written to `<output-dir>/quality.json` as soon as it ends (a run cut short still
reports what it finished):

1. **prepare** - SQuAD v1.1 dev + the four SQuADShifts sets -> 128-token chunks -> BM25 top-5 (train) / top-10
   (held-out articles), `scaledown.training.data.prepare_data`, as `scaledown prepare-data` does.
2. **label** - the base generator (SmolLM2-135M-Instruct) reads the raw top-5 documents in ScaleDown's chat prompt and
   answers greedily (`scaledown.training.labeling.teacher_answers`, OSCAR's self-distillation labels), in large
   batches until `--label-seconds` have passed; the labelled questions are the training set.
3. **train + evaluate** - each design in `--variants` trains in its own process (they share the GPU) with
   `ScaleDownTrainer` for one epoch or `--train-seconds`, then answers the held-out questions with the top-5 documents
   next to the uncompressed base generator (`scaledown.evaluation.run.evaluate_model`: paired Match, document gain).
4. **speed** - if time is left, the first design against the plain generator in bfloat16 at batch 1-256: the
   user's path (`scaledown.evaluation.benchmark.run_user_benchmark`), then `scaledown benchmark`'s tuned protocol.

    bash benchmarks/gpu_quality_run.sh outputs/gpu-quality            # on the GPU machine
    bash benchmarks/gpu_quality_run.sh outputs/gpu-dry --dry-run --device cpu   # CPU check: tiny random generator

`--dry-run` swaps SmolLM2 for a tiny random Llama with SmolLM2's tokenizer and the bundled SQuAD sample, so every
stage and code path runs in about a minute on a CPU.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


BEGAN = time.monotonic()

# name -> (from_generator keyword arguments, training-argument overrides)
VARIANTS = {
    # The demo's recipe (README, *A lexical prior for the span selector*): span slots whose selector (with the lexical
    # prior) is fitted on the gold answer spans first, then question answering on gold answers, compressor frozen.
    "span": (
        {"memory_injection_layer": 5, "memory_slots": "span"},
        {"answer_field": "gold_answers", "freeze_compressor": True, "answer_document_first": True},
    ),
    # The chunk-pooling recipe of the CPU's R1 runs: a quarter of the rows auto-encode their top document (README,
    # *Reading the memory*).
    "deep-attention-aemix": (
        {"memory_injection_layer": 5, "memory_slots": "chunk_attention"},
        {"autoencoding_mix": 0.25},
    ),
    "deep-attention": ({"memory_injection_layer": 5, "memory_slots": "chunk_attention"}, {}),
    "deep-attention-kl": (
        {"memory_injection_layer": 5, "memory_slots": "chunk_attention"},
        {"raw_document_teacher": True, "kl_weight": 1.0, "hidden_distillation_weight": 1.0},
    ),
    "oscar": ({"memory_injection_layer": 0, "memory_slots": "tokens"}, {}),
}
SQUAD_FILES = [
    "squaddev_v1.1.json",
    "new_wiki_v1.0.json",
    "nyt_v1.0.json",
    "reddit_v1.0.json",
    "amazon_reviews_v1.0.json",
]


def elapsed() -> float:
    return time.monotonic() - BEGAN


def log(message: str) -> None:
    print(f"[{elapsed():7.1f} s] {message}", flush=True)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="quality.json, logs and the speed benchmark go here.")
    parser.add_argument("--work-dir", default=None, help="Data and models (default: <output-dir>/work).")
    parser.add_argument("--squad-dir", default="../shared/data/squad", help="Folder with the five SQuAD files.")
    parser.add_argument("--tokenizer", default=None, help="Generator tokenizer folder (default: the generator's).")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu.")
    parser.add_argument("--dry-run", action="store_true", help="Tiny random generator, bundled sample: CPU check.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--budget-seconds", type=float, default=540.0, help="Whole run; later stages shrink to fit.")
    parser.add_argument("--label-seconds", type=float, default=120.0, help="Teacher labelling time.")
    parser.add_argument("--label-batch-size", type=int, default=256)
    parser.add_argument("--train-seconds", type=float, default=180.0, help="Training time per design (in parallel).")
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument(
        "--reserve-seconds", type=float, default=200.0, help="Budget kept after training for evaluation and speed."
    )
    parser.add_argument("--train-documents", type=int, default=5)
    parser.add_argument("--selector-epochs", type=int, default=4, help="Span selector's fit (span design).")
    parser.add_argument("--learning-rate-generator", type=float, default=5e-4)
    parser.add_argument("--learning-rate-compressor", type=float, default=2e-4)
    parser.add_argument("--eval-questions", type=int, default=1000)
    parser.add_argument("--eval-documents", type=int, default=5)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--speed-batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: train + evaluate one design
    parser.add_argument("--worker-seconds", type=float, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.output_dir = Path(options.output_dir)
    options.work_dir = Path(options.work_dir) if options.work_dir else options.output_dir / "work"
    if options.dry_run:
        options.label_batch_size = min(options.label_batch_size, 8)
        options.train_batch_size = min(options.train_batch_size, 4)
        options.eval_batch_size = min(options.eval_batch_size, 8)
        options.eval_questions = min(options.eval_questions, 8)
        options.max_new_tokens = min(options.max_new_tokens, 8)
        options.label_seconds = min(options.label_seconds, 20.0)
        options.train_seconds = min(options.train_seconds, 20.0)
        options.speed_batch_sizes = [b for b in options.speed_batch_sizes if b <= 4] or [1]
    return options


class Report:
    """quality.json, rewritten atomically after every stage."""

    def __init__(self, path: Path, options: argparse.Namespace):
        self.path = path
        self.data = {
            "description": "R3 (issue: reading): paired Match of ScaleDown designs vs the uncompressed base generator "
            "after training on teacher-labelled SQuAD + SQuADShifts, on held-out articles.",
            "command": "python " + " ".join(sys.argv),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
            "stages": {},
        }

    def stage(self, name: str, **values) -> None:
        self.data["stages"][name] = {**values, "ended_at_seconds": round(elapsed(), 1)}
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def tiny_generator(tokenizer_dir: str, folder: Path) -> str:
    """A 6-layer, 64-wide random Llama with SmolLM2's tokenizer and chat template (dry runs only)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def prepare(options, tokenizer_dir: str, report: Report) -> Path:
    from transformers import AutoTokenizer

    from scaledown.training.data import prepare_data, recall_at_k

    data_dir = options.work_dir / "data"
    if options.dry_run:
        sources = [str(Path(__file__).resolve().parents[1] / "scaledown" / "data" / "squad_v1.1_dev_sample.json")]
    else:
        sources = [f"squad:{Path(options.squad_dir) / name}" for name in SQUAD_FILES]
    dataset = prepare_data(
        sources,
        AutoTokenizer.from_pretrained(tokenizer_dir),
        data_dir,
        doc_max_length=128,
        num_train_documents=5,
        num_eval_documents=10,
        held_out_fraction=0.2,
        max_eval_questions=options.eval_questions,
        seed=options.seed,
    )
    report.stage(
        "prepare",
        sources=sources,
        splits={name: {"questions": len(s), "recall": recall_at_k(s.to_list())} for name, s in dataset.items()},
    )
    return data_dir


def label(options, generator: str, data_dir: Path, device: str) -> None:
    """Teacher answers for as many (shuffled) training questions as `--label-seconds` allow. Runs in its own process
    (`--worker label`), so that the GPU memory of the teacher's generation is returned before training starts."""
    import torch
    from datasets import DatasetDict, load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scaledown import ScaleDownConfig
    from scaledown.training.labeling import teacher_answers

    began = time.monotonic()
    data = load_from_disk(str(data_dir))
    train = data["train"].shuffle(seed=options.seed)
    tokenizer = AutoTokenizer.from_pretrained(generator)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    teacher = AutoModelForCausalLM.from_pretrained(generator, dtype=torch.float32).to(device).eval()
    config = ScaleDownConfig()
    answers: list[str] = []
    deadline = began + options.label_seconds
    for start in range(0, len(train), options.label_batch_size):
        if time.monotonic() > deadline:
            break
        rows = train[start : start + options.label_batch_size]
        docs = [list(d)[: options.train_documents] for d in rows["documents"]]
        answers += teacher_answers(teacher, tokenizer, config, rows["question"], docs, options.max_new_tokens)
    labelled = train.select(range(len(answers))).add_column("teacher_answer", answers)
    empty = sum(not a.strip() for a in answers)
    if options.dry_run:  # a random teacher often says nothing: stand in the gold answer so that every path runs
        labelled = labelled.map(lambda row: {"teacher_answer": row["teacher_answer"] or row["gold_answers"][0]})
    else:
        labelled = labelled.filter(lambda row: bool(row["teacher_answer"].strip()))
    DatasetDict({"train": labelled, "test": data["test"]}).save_to_disk(str(options.work_dir / "labelled"))
    seconds = time.monotonic() - began
    result = {
        "labelled": len(answers),
        "empty_answers": empty,
        "training_questions": len(labelled),
        "of_train_questions": len(train),
        "seconds": round(seconds, 1),
        "questions_per_second": round(len(answers) / seconds, 1),
        "examples": [{"question": q, "teacher_answer": a} for q, a in zip(labelled["question"][:5], answers[:5])],
    }
    (options.work_dir / "label.json").write_text(json.dumps(result, indent=2))


def run_label(options, argv: list[str], generator: str, data_dir: Path, report: Report) -> Path:
    env = {**os.environ, "SCALEDOWN_GPU_GENERATOR": generator, "SCALEDOWN_GPU_DATA": str(data_dir)}
    subprocess.run([sys.executable, __file__, *argv, "--worker", "label"], env=env, check=True)
    report.stage("label", **json.loads((options.work_dir / "label.json").read_text()))
    return options.work_dir / "labelled"


def run_workers(options, argv: list[str], generator: str, labelled: Path, report: Report) -> dict:
    """One process per design: they train side by side on the one GPU."""
    remaining = options.budget_seconds - elapsed()
    # Keep time for the evaluation and the speed benchmark after the workers.
    worker_seconds = max(5.0, min(options.train_seconds, remaining - options.reserve_seconds))
    procs = {}
    for name in options.variants:
        log_file = (options.output_dir / f"{name}.log").open("w")
        command = [sys.executable, __file__, *argv, "--worker", name, "--worker-seconds", str(worker_seconds)]
        env = {**os.environ, "SCALEDOWN_GPU_GENERATOR": generator, "SCALEDOWN_GPU_DATA": str(labelled)}
        procs[name] = (subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env), log_file)
        log(f"worker {name} started (training for at most {worker_seconds:.0f} s)")
    results = {}
    hard_deadline = BEGAN + options.budget_seconds - 20.0
    for name, (proc, log_file) in procs.items():
        try:
            proc.wait(timeout=max(1.0, hard_deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            log(f"worker {name} killed at the time budget")
        log_file.close()
        path = options.work_dir / f"{name}.json"
        results[name] = (
            json.loads(path.read_text()) if path.exists() else {"error": f"no result (exit {proc.returncode})"}
        )
        log(f"worker {name} done: {json.dumps(results[name].get('summary', results[name].get('error')))}")
    report.stage("train_evaluate", designs=results)
    return results


class TimeLimit:
    """A `TrainerCallback` that stops training after `seconds` (the schedule still spans `max_steps`)."""

    def __new__(cls, seconds: float):
        from transformers import TrainerCallback

        class _TimeLimit(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.began = time.monotonic()

            def on_step_end(self, args, state, control, **kwargs):
                if time.monotonic() - self.began > seconds:
                    control.should_training_stop = True

        return _TimeLimit()


def worker(options) -> None:
    """Train one design on the labelled questions, then evaluate it paired with the base generator."""
    import torch
    from datasets import load_from_disk
    from transformers import set_seed

    from scaledown import ScaleDownForCausalLM
    from scaledown.evaluation.run import evaluate_model
    from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments

    name = options.worker
    model_kwargs, training_overrides = VARIANTS[name]
    set_seed(options.seed)
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    data = load_from_disk(os.environ["SCALEDOWN_GPU_DATA"])
    model = ScaleDownForCausalLM.from_generator(
        os.environ["SCALEDOWN_GPU_GENERATOR"], num_compressor_layers=5, **model_kwargs
    )
    train = data["train"]
    selector = None
    if model.config.memory_slots == "span":  # fitted before training, as `scaledown demo` and `scaledown train` do
        from scaledown.training.selection import train_slot_selector

        selector = train_slot_selector(model.to(device), train, epochs=options.selector_epochs, seed=options.seed)
    steps = max(1, math.ceil(len(train) / options.train_batch_size))
    settings = {
        "output_dir": str(options.work_dir / f"{name}-checkpoints"),
        "max_steps": steps,
        "per_device_train_batch_size": options.train_batch_size,
        "learning_rate_generator": options.learning_rate_generator,
        "learning_rate_compressor": options.learning_rate_compressor,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.05,
        "num_train_documents": options.train_documents,
        "answer_field": "teacher_answer",
        "bf16": device.startswith("cuda"),
        "use_cpu": device == "cpu",
        "dataloader_num_workers": 0 if options.dry_run else 3,
        "logging_steps": max(1, steps // 40),
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": options.seed,
    }
    args = ScaleDownTrainingArguments(**{**settings, **training_overrides})
    trainer = ScaleDownTrainer(
        model=model, args=args, train_dataset=train, callbacks=[TimeLimit(options.worker_seconds)]
    )
    began = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - began
    model.save_pretrained(options.work_dir / "models" / name)
    began = time.monotonic()
    rows = data["test"].to_list()[: options.eval_questions]
    evaluation = evaluate_model(
        model.to(device),
        rows,
        batch_size=options.eval_batch_size,
        num_documents=options.eval_documents,
        with_baseline=True,
        teacher_is_baseline=True,  # the labels' teacher is the base generator with this prompt and decoding
        with_document_gain=True,
        max_new_tokens=options.max_new_tokens,
    )
    gain = evaluation.get("document_gain", {})
    summary = {
        "steps": trainer.state.global_step,
        "planned_steps": steps,
        "examples_seen": trainer.state.global_step * options.train_batch_size,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.monotonic() - began, 1),
        "match_compressed": evaluation["compressed"]["gold"].get("match"),
        "match_uncompressed": evaluation["uncompressed"]["gold"].get("match"),
        "paired": evaluation.get("paired"),
        "gain_share": gain.get("gain_share"),
        "document_gain_compressed": gain.get("compressed", {}).get("document_gain"),
        "document_gain_uncompressed": gain.get("uncompressed", {}).get("document_gain"),
        "teacher_fidelity_rouge_l": evaluation["compressed"]["teacher_fidelity"].get("rouge_l"),
    }
    result = {
        "name": name,
        "model": model_kwargs,
        "training": {k: v for k, v in training_overrides.items()},
        "summary": summary,
        "span_selector": selector,
        "log": [h for h in trainer.state.log_history if "loss" in h],
        "evaluation": evaluation,
    }
    (options.work_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2), flush=True)


def speed(options, device: str, report: Report) -> None:
    """The user's path (load the folder, `generate_from_text`, against plain `generate` on the raw documents) in
    bfloat16 on the GPU, then, if time is left, `scaledown benchmark`'s tuned protocol (adapters merged)."""
    from scaledown.evaluation.benchmark import run_benchmark, run_user_benchmark

    folder = options.work_dir / "models" / options.variants[0]
    if not folder.is_dir():
        report.stage("speed", skipped=f"{folder} was not saved")
        return
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    user = run_user_benchmark(
        folder,
        batch_sizes=options.speed_batch_sizes,
        dtypes=[dtype],
        repetitions=3,
        num_documents=10,
        device=device,
        output_dir=options.output_dir / "speed",
    )
    report.stage("speed", model=str(folder), user_path=user)
    if options.budget_seconds - elapsed() < 40.0:
        return
    tuned = run_benchmark(
        folder,
        batch_sizes=options.speed_batch_sizes,
        repetitions=3,
        num_documents=10,
        device=device,
        dtype=dtype,
        output_dir=options.output_dir / "speed",
    )
    report.stage("speed", model=str(folder), user_path=user, tuned_path=tuned["summary"])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse(argv)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    if options.worker == "label":
        device = options.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
        label(options, os.environ["SCALEDOWN_GPU_GENERATOR"], Path(os.environ["SCALEDOWN_GPU_DATA"]), device)
        return 0
    if options.worker:
        worker(options)
        return 0
    import torch

    from scaledown.offline_weights import smollm2_path

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options.output_dir.mkdir(parents=True, exist_ok=True)
    report = Report(options.output_dir / "quality.json", options)
    report.data["environment"] = environment(device)
    report.write()
    log(f"environment: {report.data['environment']}")

    if options.dry_run:
        tokenizer_dir = options.tokenizer or str(smollm2_path())
        generator = tiny_generator(tokenizer_dir, options.work_dir / "tiny-generator")
        conversion = None
    else:
        # The safetensors conversion of SmolLM2 (CPU, ~30 s) runs while the data is prepared.
        code = "from scaledown.offline_weights import smollm2_path; print(smollm2_path())"
        conversion = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        tokenizer_dir = options.tokenizer
    if tokenizer_dir is None:
        conversion.wait()
        tokenizer_dir = conversion.stdout.read().strip().splitlines()[-1]
    data_dir = prepare(options, tokenizer_dir, report)
    log("data prepared")
    if conversion is not None:
        conversion.wait()
        if conversion.returncode != 0:
            raise RuntimeError("Converting SmolLM2 to safetensors failed.")
        generator = str(smollm2_path())
    labelled = run_label(options, argv, generator, data_dir, report)
    log(f"labelled: {report.data['stages']['label']['labelled']} questions")
    run_workers(options, argv, generator, labelled, report)
    if options.budget_seconds - elapsed() > 45.0:
        speed(options, device, report)
        log("speed measured")
    else:
        report.stage("speed", skipped="no time left in the budget")
    report.data["total_seconds"] = round(elapsed(), 1)
    report.write()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
