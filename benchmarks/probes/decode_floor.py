"""What one greedy decoding step of the base generator costs at batch 1, against streaming its weights once.

A decoding step reads every weight matrix once (one matrix-vector product each); that is its floor on a CPU, the same
for ScaleDown and the uncompressed generator. The rest of the step (norms, rotary embeddings, attention over the cache,
PyTorch's per-operation dispatch) is what a compiled decoder could remove, on both sides alike.

    python benchmarks/probes/decode_floor.py [--dtype float32] [--context 306]
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

from scaledown.offline_weights import smollm2_path


def _median_ms(call, repetitions: int = 20) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repetitions):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return round(1000 * sorted(times)[len(times) // 2], 1)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--context", type=int, default=306, help="Prompt tokens in the cache (306: ScaleDown's).")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path()), dtype=dtype).eval()
    ids = torch.randint(0, 1000, (1, args.context))
    cache = model(ids, use_cache=True).past_key_values
    step = ids[:, -1:]
    # One token per call on a cache that grows by one each time, as in `generate` (a few dozen tokens at most).
    decode = _median_ms(lambda: model(step, past_key_values=cache, use_cache=True))
    matrices = [p for p in model.parameters() if p.dim() == 2]  # the tied embedding is the LM head's matrix
    inputs = {m.shape[1]: torch.randn(1, m.shape[1], dtype=dtype) for m in matrices}
    stream = _median_ms(lambda: [inputs[m.shape[1]] @ m.t() for m in matrices])
    megabytes = sum(m.numel() * m.element_size() for m in matrices) / 1e6
    record = {"dtype": args.dtype, "context": args.context, "threads": torch.get_num_threads()}
    record |= {"decode_step_ms": decode, "weight_stream_ms": stream, "weight_megabytes": round(megabytes)}
    record |= {"stream_gb_per_s": round(megabytes / stream, 1), "overhead_share": round(1 - stream / decode, 3)}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
