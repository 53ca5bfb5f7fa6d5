"""Training throughput: ScaleDown distillation vs plain LoRA fine-tuning of the same generator on raw documents.

Both runs see the same examples (SQuAD v1.1 dev questions with their BM25 top-k 128-token chunks and an answer), the
same generator (SmolLM2-135M-Instruct by default, LoRA r16 on all linear layers), batch size, AdamW and fp32, and the
same training loop (forward, backward, optimizer step). Repetitions are interleaved (A, B, A, B, ...) and medians
reported, since another busy process slows 2-thread torch a lot. Prints one JSON object; the target on a 2-core CPU
is a ratio of at least 1.5.

    python benchmarks/train_throughput.py --steps 4 --rounds 3
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scaledown import (
    ScaleDownForCausalLM,
    build_compressor_inputs,
    build_generator_inputs,
    memory_segments,
    raw_document_segments,
)
from scaledown.offline_weights import smollm2_path
from scaledown.training.data import build_split, read_squad
from scaledown.training.losses import distillation_loss


DEFAULT_SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "squaddev_v1.1.json"


def load_examples(squad: Path, tokenizer, count: int, top_k: int, doc_max_length: int) -> list[dict]:
    records = read_squad(squad)
    articles = sorted({r.article for r in records})[:6]
    collection = [r for r in records if r.article in articles]
    rows = build_split(collection[:count], tokenizer, doc_max_length, top_k, "pool", collection=collection)
    for row in rows:
        row["teacher_answer"] = row["gold_answers"][0] if row["gold_answers"] else ""
    return rows


def lora_baseline(generator_path: str, config):
    from peft import LoraConfig, inject_adapter_in_model

    model = AutoModelForCausalLM.from_pretrained(generator_path)
    lora = LoraConfig(**{"bias": "none", **config.lora_config})
    inject_adapter_in_model(lora, model)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    return model.train()


def time_steps(step, batches, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default=None, help="Generator folder or hub id (default: SmolLM2 offline).")
    parser.add_argument("--squad", default=str(DEFAULT_SQUAD), help="SQuAD-format JSON file.")
    parser.add_argument("--num-compressor-layers", type=int, default=5)
    parser.add_argument("--documents", type=int, default=5, help="Documents per question (5 in OSCAR's training).")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="Timed optimizer steps per round and setting.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (medians are reported).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--output", default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator_path = args.generator or str(smollm2_path())

    model = ScaleDownForCausalLM.from_generator(generator_path, num_compressor_layers=args.num_compressor_layers)
    model.train()
    config = model.config
    baseline = lora_baseline(generator_path, config)
    tokenizer = AutoTokenizer.from_pretrained(generator_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    rows = load_examples(Path(args.squad), tokenizer, args.batch_size * 4, args.documents, config.doc_max_length)
    compressed_batches, raw_batches = [], []
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start : start + args.batch_size]
        questions = [r["question"] for r in chunk]
        documents = [r["documents"] for r in chunk]
        answers = [r["teacher_answer"] for r in chunk]
        slots = memory_segments(config, [len(d) for d in documents])
        batch = build_generator_inputs(model.tokenizer, config, questions, slots, answers, padding_side="right")
        batch.update(build_compressor_inputs(model.compressor_tokenizer, config, questions, documents))
        compressed_batches.append(batch)
        raw = raw_document_segments(tokenizer, config, documents)
        raw_batches.append(build_generator_inputs(tokenizer, config, questions, raw, answers, padding_side="right"))

    opt_scaledown = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    opt_baseline = torch.optim.AdamW([p for p in baseline.parameters() if p.requires_grad], lr=1e-5)

    def scaledown_step(batch):
        labels = batch["labels"]
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        loss, _ = distillation_loss(out.logits, labels)
        loss.backward()
        opt_scaledown.step()
        opt_scaledown.zero_grad(set_to_none=True)

    def baseline_step(batch):
        labels = batch["labels"]
        logits = baseline(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = distillation_loss(logits, labels)
        loss.backward()
        opt_baseline.step()
        opt_baseline.zero_grad(set_to_none=True)

    time_steps(scaledown_step, compressed_batches, 1)  # warm-up
    time_steps(baseline_step, raw_batches, 1)
    scaledown_times, baseline_times = [], []
    for _ in range(args.rounds):
        scaledown_times.append(time_steps(scaledown_step, compressed_batches, args.steps))
        baseline_times.append(time_steps(baseline_step, raw_batches, args.steps))
    examples = args.steps * args.batch_size
    scaledown_eps = examples / statistics.median(scaledown_times)
    baseline_eps = examples / statistics.median(baseline_times)
    result = {
        "benchmark": "train_throughput",
        "generator": generator_path,
        "compressor": f"n_layers ({args.num_compressor_layers} layers)",
        "documents_per_question": args.documents,
        "batch_size": args.batch_size,
        "generator_prompt_tokens_mean": {
            "scaledown": float(
                torch.stack([b["attention_mask"].sum(1).float().mean() for b in compressed_batches]).mean()
            ),
            "lora_raw_documents": float(
                torch.stack([b["attention_mask"].sum(1).float().mean() for b in raw_batches]).mean()
            ),
        },
        "examples_per_second": {"scaledown": round(scaledown_eps, 3), "lora_raw_documents": round(baseline_eps, 3)},
        "speedup": round(scaledown_eps / baseline_eps, 3),
        "rounds_seconds": {"scaledown": scaledown_times, "lora_raw_documents": baseline_times},
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
