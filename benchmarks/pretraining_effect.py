"""Does compressor pretraining help an encoder compressor? Side by side, same seed, same data, same steps.

1. Build SmolLM2-135M-Instruct + an all-MiniLM-L6-v2 encoder compressor (128 tokens -> 8 memory embeddings).
2. Pretrain it (`scaledown pretrain`'s code: auto-encoding + continuation, ratio 0.5) on passages that share no
   article with the evaluation (default: SQuADShifts new_wiki), measuring held-out reconstruction ROUGE-L and
   continuation perplexity before and after.
3. Fine-tune the pretrained model and a fresh one (same initialisation) with `ScaleDownTrainer` on a labelled dataset
   (`scaledown label` output, e.g. the learning curve's), then evaluate both with `scaledown evaluate`'s code on the
   held-out split: Match, F1, ROUGE-L, teacher fidelity, paired Match difference.

    python benchmarks/pretraining_effect.py --labelled outputs/learning-curve/data-labelled \
        --text ../shared/data/squad/new_wiki_v1.0.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from transformers import set_seed

from scaledown import ScaleDownForCausalLM
from scaledown.evaluation.pretraining import evaluate_pretraining
from scaledown.evaluation.run import evaluate_model, paired_match
from scaledown.offline_weights import minilm_path, smollm2_path
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments
from scaledown.training.pretraining import (
    PretrainingCollator,
    make_pretraining_rows,
    read_texts,
    split_rows,
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", required=True, help="Folder written by `scaledown label` (train + test).")
    parser.add_argument("--text", nargs="+", required=True, help="Pretraining text sources (see `read_texts`).")
    parser.add_argument("--output-dir", default="outputs/pretraining-effect")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--pretrain-batch-size", type=int, default=8)
    parser.add_argument("--finetune-steps", type=int, default=80)
    parser.add_argument("--finetune-batch-size", type=int, default=4)
    parser.add_argument("--eval-questions", type=int, default=60)
    parser.add_argument("--held-out-rows", type=int, default=24)
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="Paper: 1e-4 (encoder compressor, LoRA).")
    parser.add_argument("--pretrain-learning-rate", type=float, default=None, help="Default: --learning-rate.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build(seed: int) -> ScaleDownForCausalLM:
    set_seed(seed)
    return ScaleDownForCausalLM.from_generator(
        str(smollm2_path()),
        compressor_type="encoder",
        compressor=str(minilm_path()),
        compressor_name_or_path=str(minilm_path()),
        doc_max_length=128,
        compression_rate=16,
        enable_reranking=True,
    )


def arguments(output_dir: Path, steps: int, batch: int, lr: float, seed: int) -> ScaleDownTrainingArguments:
    return ScaleDownTrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate_generator=lr,
        learning_rate_compressor=lr,
        logging_steps=10,
        save_strategy="no",
        use_cpu=True,
        seed=seed,
        disable_tqdm=False,
    )


def main():
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": vars(options)}

    def write():
        (out / "pretraining_effect.json").write_text(json.dumps(result, indent=2))

    # 2. Pretraining.
    pretrained = build(options.seed)
    texts = read_texts(options.text)
    rows = make_pretraining_rows(texts, pretrained.compressor_tokenizer, 128, seed=options.seed)
    train_rows, held_out = split_rows(rows, options.held_out_rows, seed=options.seed)
    result["pretraining"] = {"passages": len(texts), "train_rows": len(train_rows), "held_out_rows": len(held_out)}
    result["pretraining"]["before"] = evaluate_pretraining(pretrained, held_out)
    write()
    began = time.perf_counter()
    trainer = ScaleDownTrainer(
        model=pretrained,
        args=arguments(
            out / "pretrain",
            options.pretrain_steps,
            options.pretrain_batch_size,
            options.pretrain_learning_rate or options.learning_rate,
            options.seed,
        ),
        train_dataset=Dataset.from_list(train_rows),
        data_collator=PretrainingCollator.from_model(pretrained, max_answer_length=136),
    )
    trainer.train()
    result["pretraining"]["seconds"] = round(time.perf_counter() - began, 1)
    result["pretraining"]["log_history"] = trainer.state.log_history
    result["pretraining"]["after"] = evaluate_pretraining(pretrained, held_out)
    write()

    # 3. Fine-tuning with and without pretraining.
    labelled = load_from_disk(options.labelled)
    test_rows = labelled["test"].to_list()[: options.eval_questions]
    finetuned = {}
    for name, model in (("with pretraining", pretrained), ("without pretraining", build(options.seed))):
        began = time.perf_counter()
        trainer = ScaleDownTrainer(
            model=model,
            args=arguments(
                out / "finetune",
                options.finetune_steps,
                options.finetune_batch_size,
                options.learning_rate,
                options.seed,
            ),
            train_dataset=labelled["train"],
        )
        trainer.train()
        seconds = round(time.perf_counter() - began, 1)
        first = not finetuned  # evaluates the uncompressed baseline too, whose answers are the teacher's here
        report = evaluate_model(model, test_rows, num_documents=10, with_baseline=first, teacher_is_baseline=first)
        if first:
            for row, record in zip(test_rows, report["records"]):
                row["teacher_answer"] = record["uncompressed"]
        finetuned[name] = report
        result[name] = {
            "finetune_seconds": seconds,
            "final_loss": next(h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h),
            "compressed": report["compressed"],
            "reranking": report.get("reranking"),
        }
        write()
        del trainer
    result["uncompressed"] = finetuned["with pretraining"]["uncompressed"]
    result["paired_match_with_minus_without"] = paired_match(
        [r["compressed_match"] for r in finetuned["with pretraining"]["records"] if r["gold_answers"]],
        [r["compressed_match"] for r in finetuned["without pretraining"]["records"] if r["gold_answers"]],
    )
    write()
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2)[:4000])


if __name__ == "__main__":
    main()
