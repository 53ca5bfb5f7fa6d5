"""How the span selector's held-out window hit rate moves with its epochs and learning rate, on the demo's prepared
data (`outputs/demo/data`, written by `scaledown demo`), seed 0, one fresh model per setting.

    python benchmarks/probes/selector_epochs.py 8:1e-3 16:1e-3 8:3e-3 [--output docs/results/span-selector-epochs.json]
    python benchmarks/probes/selector_epochs.py 8:1e-3 --output /tmp/sel8.json --save outputs/probe/sel8
    python benchmarks/probes/selector_epochs.py 8:1e-3 --data outputs/reading/squad-all --questions 6000 ...
"""

import argparse
import json
import sys
import time

from datasets import load_from_disk
from demo_setup import demo_model

from scaledown.training.selection import train_slot_selector


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="epochs:learning_rate, e.g. 8:1e-3")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--output", default="docs/results/span-selector-epochs.json")
    parser.add_argument("--save", default=None, help="Save the last setting's model here.")
    parser.add_argument("--init-seed", type=int, default=0, help="Seed of the model's initialisation (the fit's: 0).")
    parser.add_argument("--questions", type=int, default=None, help="Read only the first N training questions.")
    parser.add_argument("--config", default="{}", help="Extra ScaleDownConfig arguments, JSON (e.g. '{\"a\": 1}').")
    args = parser.parse_args()
    results = {}
    for setting in args.settings:
        epochs, learning_rate = setting.split(":")
        model = demo_model(args.init_seed, **json.loads(args.config))
        began = time.perf_counter()
        rows = load_from_disk(args.data)["train"]
        if args.questions:
            rows = rows.select(range(min(args.questions, len(rows))))
        record = train_slot_selector(model, rows, epochs=int(epochs), learning_rate=float(learning_rate), seed=0)
        record["seconds"] = round(time.perf_counter() - began, 1)
        results[setting] = record
        print(json.dumps({setting: {k: record[k] for k in ("window_hit_rate", "seconds")}}), flush=True)
    if args.save:
        model.save_pretrained(args.save)
    with open(args.output, "w") as handle:
        json.dump({"command": "python " + " ".join(sys.argv),
                   "data": args.data, "questions": args.questions, "results": results}, handle, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
