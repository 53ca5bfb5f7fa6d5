"""ScaleDown's decoding step against the plain generator's on the same prompt, interleaved: the demo model's
`generate_from_compressed` on the benchmark's batch-1 inputs (a 306-token prompt), the base generator's `generate` on
that very prompt (its `<MEM>` placeholders replaced by an ordinary token), and the same with ScaleDown's reserved
tokens suppressed. Per-step time is the 32-token answer minus the 1-token answer over 31 steps, median of 7. What
remains between the first two is ScaleDown's own decoding overhead.

    python benchmarks/probes/decode_step_gap.py [--model outputs/demo/model]
"""

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from scaledown.evaluation.benchmark import benchmark_inputs
from scaledown.modeling_scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.processing_scaledown import build_generator_inputs, memory_segments


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/model")
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    model = ScaleDownForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(str(smollm2_path()), dtype=torch.float32).eval()
    questions, documents = benchmark_inputs(model.tokenizer, 1, 10, model.config.doc_max_length, 128)
    compressed = model.compress_for_questions(questions, documents)
    segments = memory_segments(model.config, [memory.shape[0] for memory in compressed])
    prompt = build_generator_inputs(model.tokenizer, model.config, list(questions), segments)
    ids, mask = prompt["input_ids"], prompt["attention_mask"]
    ids = ids.masked_fill(ids >= plain.config.vocab_size, model.tokenizer.convert_tokens_to_ids("the"))
    reserved = list(model.generation_config.suppress_tokens or [])
    options = dict(attention_mask=mask, do_sample=False, pad_token_id=model.tokenizer.eos_token_id)
    systems = {
        "scaledown": lambda n: model.generate_from_compressed(
            questions, compressed, max_new_tokens=n, min_new_tokens=n
        ),
        "plain": lambda n: plain.generate(ids, max_new_tokens=n, min_new_tokens=n, **options),
        "plain+suppress": lambda n: plain.generate(
            ids, max_new_tokens=n, min_new_tokens=n, suppress_tokens=reserved, **options
        ),
    }

    def seconds(call, tokens):
        began = time.perf_counter()
        call(tokens)
        return time.perf_counter() - began

    for call in systems.values():
        call(32), call(1)
    steps = {name: [] for name in systems}
    for _ in range(args.repetitions):
        for name, call in systems.items():
            steps[name].append((seconds(call, 32) - seconds(call, 1)) / 31)
    for name, values in steps.items():
        print(f"{name}: {1000 * sorted(values)[len(values) // 2]:.1f} ms per decoding step")


if __name__ == "__main__":
    main()
