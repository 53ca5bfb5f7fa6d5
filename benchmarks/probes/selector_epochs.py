"""How the span selector's held-out window hit rate moves with its epochs and learning rate, on the demo's prepared
data (`outputs/demo/data`, written by `scaledown demo`), seed 0, one fresh model per setting.

    python benchmarks/probes/selector_epochs.py 8:1e-3 16:1e-3 8:3e-3 [--output docs/results/span-selector-epochs.json]
    python benchmarks/probes/selector_epochs.py 8:1e-3 --output /tmp/sel8.json --save outputs/probe/sel8
"""

import argparse
import json
import time

from datasets import load_from_disk
from transformers import set_seed

from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.training.selection import train_slot_selector


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="epochs:learning_rate, e.g. 8:1e-3")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--output", default="docs/results/span-selector-epochs.json")
    parser.add_argument("--save", default=None, help="Save the last setting's model here.")
    args = parser.parse_args()
    results = {}
    for setting in args.settings:
        epochs, learning_rate = setting.split(":")
        set_seed(0)
        model = ScaleDownForCausalLM.from_generator(
            str(smollm2_path()), num_compressor_layers=5, enable_reranking=True, memory_injection_layer=5,
            memory_slots="span",
        )  # fmt: skip
        began = time.perf_counter()
        record = train_slot_selector(
            model, load_from_disk(args.data)["train"], epochs=int(epochs), learning_rate=float(learning_rate), seed=0
        )
        record["seconds"] = round(time.perf_counter() - began, 1)
        results[setting] = record
        print(json.dumps({setting: {k: record[k] for k in ("window_hit_rate", "seconds")}}), flush=True)
    if args.save:
        model.save_pretrained(args.save)
    with open(args.output, "w") as handle:
        json.dump({"command": "python benchmarks/probes/selector_epochs.py " + " ".join(args.settings),
                   "data": args.data, "results": results}, handle, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
