"""What a compiled decoder would buy at batch 1: the base generator's 31 decoding steps of a 32-token greedy answer,
eager (`generate` as a user calls it) against `torch.compile` with a static cache (transformers' `CompileConfig`,
forced on the CPU), on ScaleDown's prompt length (306 tokens) and on the uncompressed one (1,466), interleaved.

Decoding costs the same per step on both sides of the user-path benchmark, so a compiled decoder would have to serve
both systems to keep the comparison fair; its first call compiles (printed as `compile_seconds`). The decoding time
is the 32-token answer minus the 1-token answer (its prefill), medians of `--repetitions` after a warm-up.

    python benchmarks/probes/compiled_decode.py [--dtype float32] [--contexts 306 1466] [--repetitions 5]
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, CompileConfig

from scaledown.offline_weights import smollm2_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--contexts", type=int, nargs="+", default=[306, 1466])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path()), dtype=getattr(torch, args.dtype)).eval()
    compile_config = CompileConfig(fullgraph=False, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    modes = {
        "eager": {},
        "compiled": {"cache_implementation": "static", "compile_config": compile_config},
    }

    def answer(ids, tokens, options) -> float:
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0, **options)
        return time.perf_counter() - began

    records = []
    for context in args.contexts:
        ids = torch.randint(0, 1000, (1, context))
        record = {"dtype": args.dtype, "context": context, "threads": torch.get_num_threads()}
        record["compile_seconds"] = round(answer(ids, args.new_tokens, modes["compiled"]), 1)
        answer(ids, 1, modes["compiled"])
        for options in modes.values():  # warm-up
            answer(ids, args.new_tokens, options)
        times = {name: [] for name in modes}
        for _ in range(args.repetitions):
            for name, options in modes.items():
                times[name].append(answer(ids, args.new_tokens, options) - answer(ids, 1, options))
        steps = args.new_tokens - 1
        for name, values in times.items():
            median = sorted(values)[len(values) // 2]
            record[f"{name}_decode_seconds"] = round(median, 3)
            record[f"{name}_ms_per_step"] = round(1000 * median / steps, 1)
        records.append(record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
