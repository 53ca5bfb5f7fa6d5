"""What the trainer saves by asking the generator for the answer positions' logits only (`logits_to_keep`), on the
demo's training step: SmolLM2 + 5-layer compressor, span slots at layer 5, LoRA, relevance head, five documents per
row, batch 4, gold answers, compressor frozen (`scaledown demo`'s defaults). Forward + backward (no update) of the
same batches, the two settings interleaved, medians; the loss of each pair is printed to show they agree.

    python benchmarks/probes/answer_logits.py [--data outputs/demo/data-labelled] [--steps 6]
"""

import argparse
import statistics
import time

import torch
from datasets import load_from_disk
from demo_setup import demo_model, demo_trainer, report

import scaledown.training.trainer as trainer_module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/demo/data-labelled")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    model = demo_model()
    rows = load_from_disk(args.data)["train"]
    trainer = demo_trainer(model, rows, "outputs/probe-answer-logits", args.steps)
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
    report(result, args)


if __name__ == "__main__":
    main()
