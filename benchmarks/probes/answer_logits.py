"""What the trainer saves by asking the generator for the answer positions' logits only (`logits_to_keep`), on the
demo's training step: SmolLM2 + 5-layer compressor, span slots at layer 5, LoRA, relevance head, five documents per
row, batch 4, gold answers, compressor frozen (`scaledown demo`'s defaults). Forward + backward (no update) of the
same batches, the two settings interleaved, medians; the loss of each pair is printed to show they agree.

    python benchmarks/probes/answer_logits.py [--data outputs/demo/data-labelled] [--steps 6]
"""

import argparse
import json
import statistics
import time

import torch
from datasets import load_from_disk
from transformers import set_seed

import scaledown.training.trainer as trainer_module
from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/demo/data-labelled")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    set_seed(0)
    model = ScaleDownForCausalLM.from_generator(
        str(smollm2_path()), num_compressor_layers=5, enable_reranking=True, memory_injection_layer=5,
        memory_slots="span",
    )  # fmt: skip
    training = ScaleDownTrainingArguments(
        output_dir="outputs/probe-answer-logits", per_device_train_batch_size=4, use_cpu=True, save_strategy="no",
        num_train_documents=5, answer_field="gold_answers", answer_document_first=True, freeze_compressor=True,
        autoencoding_mix=0.0, max_steps=args.steps, report_to=[],
    )  # fmt: skip
    rows = load_from_disk(args.data)["train"]
    trainer = ScaleDownTrainer(model=model, args=training, train_dataset=rows)
    trainer.create_optimizer()
    model.train()
    keeps = trainer_module._keeps_logits
    times = {"answer positions": [], "every position": []}
    losses = []
    rows = rows.to_list()
    for step in range(args.steps + 1):  # the first pair warms up
        batch = trainer.data_collator(rows[4 * step : 4 * step + 4])
        pair = []
        for name in ("answer positions", "every position") if step % 2 else ("every position", "answer positions"):
            trainer_module._keeps_logits = keeps if name == "answer positions" else (lambda model, labels: False)
            torch.manual_seed(step)  # the same dropout masks for both settings
            began = time.perf_counter()
            loss = trainer.compute_loss(model, dict(batch))
            loss.backward()
            trainer.optimizer.zero_grad()  # no update: both settings see the same weights
            elapsed = time.perf_counter() - began
            if step:
                times[name].append(elapsed)
            pair.append(round(loss.item(), 5))
        losses.append(pair)
    trainer_module._keeps_logits = keeps
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    result = {
        "seconds_per_step": medians,
        "speed-up": round(medians["every position"] / medians["answer positions"], 3),
        "losses (first setting, second setting)": losses,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"command": vars(args), **result}, handle, indent=1)


if __name__ == "__main__":
    main()
