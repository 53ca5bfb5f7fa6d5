"""`scaledown benchmark`: OSCAR's speed protocol, compressed against uncompressed generation with the same generator.

Per query: a `query_tokens`-token query (128), `num_documents` documents of `doc_max_length` tokens (10 x 128), and
exactly `new_tokens` generated tokens (32), at each batch size (1 and 16). The compressed system compresses (the query
prefix encoded once per question with a decoder compressor) and generates from the memory embeddings; the uncompressed
one is the base generator reading the raw documents in the same prompt. Repetitions are interleaved and medians
reported; the compressed system runs with its LoRA adapters merged into the generator, as deployed. FLOPs are
counted analytically (and by `torch.profiler` where it sees them); peak memory is measured in a
fresh process per setting (resident memory above the loaded model on CPU, `max_memory_allocated` on CUDA).
Writes `benchmark.json` and `benchmark.png` to `output_dir`.
"""

import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from transformers.utils import logging

from ..modeling_scaledown import fast_dtype
from ..processing_scaledown import check_positive
from ..training.data import SAMPLE


logger = logging.get_logger(__name__)


def benchmark_inputs(tokenizer, batch_size: int, num_documents: int, doc_tokens: int, query_tokens: int):
    """Real text cut to exact token counts: per query a question padded with passage text to `query_tokens` tokens and
    `num_documents` windows of `doc_tokens` tokens from the shipped SQuAD sample."""
    payload = json.loads(SAMPLE.read_text())
    paragraphs = [p for article in payload["data"] for p in article["paragraphs"]]
    ids = tokenizer(" ".join(p["context"] for p in paragraphs), add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + doc_tokens] for i in range(0, len(ids) - doc_tokens, doc_tokens)]
    questions, documents = [], []
    for b in range(batch_size):
        qa = paragraphs[b % len(paragraphs)]["qas"][0]["question"]
        q_ids = tokenizer(qa, add_special_tokens=False)["input_ids"]
        filler = windows[(b * 7) % len(windows)]
        questions.append(tokenizer.decode((filler + q_ids)[-query_tokens:]))
        start = (b * num_documents) % max(len(windows) - num_documents, 1)
        documents.append([tokenizer.decode(w) for w in windows[start : start + num_documents]])
    return questions, documents


def _layer_flops_per_token(config, context: float) -> float:
    """Forward FLOPs of one decoder layer for one token attending to `context` positions."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    linear = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * config.intermediate_size
    return 2 * linear + 4 * heads * head_dim * context


def decoder_flops(config, layers: int, prefix: int, lengths: list[int], new_tokens: int = 0, lm_head: bool = True):
    """Analytic forward FLOPs of `layers` decoder layers: for each row, `lengths[i]` new positions on top of `prefix`
    cached ones, then `new_tokens` decoding steps; plus the LM head on generated tokens."""
    total = 0.0
    for length in lengths:
        # positions p = prefix .. prefix+length-1 attend to p+1 positions: mean context prefix + (length+1)/2
        total += length * layers * _layer_flops_per_token(config, prefix + (length + 1) / 2)
        for step in range(new_tokens):
            total += layers * _layer_flops_per_token(config, prefix + length + step + 1)
        if lm_head:
            total += new_tokens * 2 * config.hidden_size * config.vocab_size
    return total


def analytic_flops(model, questions, documents, new_tokens: int) -> dict:
    """FLOPs of the compressed and uncompressed systems for one batch (decoder compressors; encoders approximated
    with their own layer count and width)."""
    from ..processing_scaledown import build_generator_inputs, compressor_parts, memory_segments, raw_document_segments

    config = model.config
    generator_config = model.generator.config
    compressor_config = config.get_compressor_config()
    compressor = 0.0
    for prefix, suffixes in compressor_parts(model.compressor_tokenizer, config, questions, documents):
        layers = compressor_config.num_hidden_layers
        if config.compressor_type == "encoder":
            compressor += decoder_flops(
                compressor_config, layers, 0, [len(prefix) + len(s) for s in suffixes], 0, False
            )
        else:
            compressor += decoder_flops(compressor_config, layers, 0, [len(prefix)], 0, False)
            compressor += decoder_flops(compressor_config, layers, len(prefix), [len(s) for s in suffixes], 0, False)
    slots = memory_segments(config, [len(d) for d in documents])
    compressed_prompt = build_generator_inputs(model.tokenizer, config, questions, slots)["attention_mask"].sum(1)
    raw = raw_document_segments(model.tokenizer, config, documents)
    raw_prompt = build_generator_inputs(model.tokenizer, config, questions, raw)["attention_mask"].sum(1)
    layers = generator_config.num_hidden_layers
    generator = decoder_flops(generator_config, layers, 0, compressed_prompt.tolist(), new_tokens)
    uncompressed = decoder_flops(generator_config, layers, 0, raw_prompt.tolist(), new_tokens)
    return {
        "compressed": compressor + generator,
        "compressed_compressor": compressor,
        "compressed_generator": generator,
        "uncompressed": uncompressed,
        "ratio": uncompressed / (compressor + generator),
        "prompt_tokens_compressed": float(compressed_prompt.float().mean()),
        "prompt_tokens_uncompressed": float(raw_prompt.float().mean()),
    }


def _run_compressed(model, questions, documents, generate_kwargs) -> dict:
    began = time.perf_counter()
    compressed = model.compress_for_questions(questions, documents)
    middle = time.perf_counter()
    model.generate_from_compressed(questions, compressed, **generate_kwargs)
    end = time.perf_counter()
    return {"seconds": end - began, "compressor_seconds": middle - began, "generator_seconds": end - middle}


def _run_uncompressed(model, questions, documents, generate_kwargs) -> dict:
    with model.generator_adapters_disabled():  # unmerging the adapters is not part of the baseline's time
        began = time.perf_counter()
        model.generate_uncompressed(questions, documents, **generate_kwargs)
        return {"seconds": time.perf_counter() - began}


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak resident memory (CPU, sampled every 2 ms) or peak allocated memory (CUDA) during a block, in MiB."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self._process = psutil.Process()
        self._base = self._process.memory_info().rss
        self._peak = self._base
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self._running = False
            self._thread.join()
            self._peak = max(self._peak, self._process.memory_info().rss)
            self.peak_mib = (self._peak - self._base) / 2**20
        return False


def make_resident(*models) -> None:
    """Bring every weight of `models` into memory before a peak is measured, as a served model's are: weights loaded
    from safetensors without a dtype change stay memory-mapped until first read (and merging LoRA adapters copies the
    pages it writes), which a CPU's resident-memory peak would otherwise count as the first run's activations."""
    for model in models:
        if model is None:
            continue
        if hasattr(model, "_merge_for_inference"):
            model._merge_for_inference()
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.device.type == "cpu" and tensor.numel():
                    tensor.sum()


def resolve_dtype(dtype: str | None, device: str | None) -> str | None:
    """`"auto"`: the device's fast dtype (`fast_dtype` of the modeling file: bfloat16 where it computes in it
    natively, how one would deploy; float32 on other CPUs); `None`: the checkpoint's dtype; otherwise the name given
    (`"float32"`, `"bfloat16"`, ...), checked."""
    if dtype == "auto":
        return str(fast_dtype(device or "cpu")).replace("torch.", "")
    if dtype is not None and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use 'auto' or a torch dtype name such as 'float32', 'bfloat16'.")
    return dtype


def _load(model_path, dtype=None, device=None):
    from ..modeling_scaledown import ScaleDownForCausalLM

    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = ScaleDownForCausalLM.from_pretrained(model_path, **kwargs).eval()
    if device:
        model.to(device)
    # Deployment mode: LoRA folded into the generator (the uncompressed baseline runs with the adapters off).
    return model.merge_adapters()


def memory_probe(model_path, system: str, batch_size: int, settings: dict) -> float:
    """Run one setting once in this (fresh) process and return its peak memory in MiB."""
    model = _load(model_path, settings.get("dtype"), settings.get("device"))
    return _memory_in_process(model, system, batch_size, settings)


def _memory_in_process(model, system: str, batch_size: int, settings: dict) -> float:
    device = next(model.parameters()).device
    questions, documents = benchmark_inputs(
        model.tokenizer, batch_size, settings["num_documents"], model.config.doc_max_length, settings["query_tokens"]
    )
    generate_kwargs = {"max_new_tokens": settings["new_tokens"], "min_new_tokens": settings["new_tokens"]}
    run = _run_compressed if system == "compressed" else _run_uncompressed
    make_resident(model)
    with PeakMemory(device) as peak:
        run(model, questions, documents, generate_kwargs)
    return peak.peak_mib


def _profiled_flops(model, questions, documents, generate_kwargs) -> dict:
    from torch.profiler import ProfilerActivity, profile

    result = {}
    for system, run in (("compressed", _run_compressed), ("uncompressed", _run_uncompressed)):
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            run(model, questions, documents, generate_kwargs)
        result[system] = float(sum(e.flops for e in prof.key_averages() if e.flops))
    result["ratio"] = result["uncompressed"] / result["compressed"] if result["compressed"] else None
    return result


def run_benchmark(
    model_path,
    batch_sizes=(1, 16),
    repetitions: int = 3,
    num_documents: int = 10,
    query_tokens: int = 128,
    new_tokens: int = 32,
    output_dir="outputs/benchmark",
    dtype=None,
    device=None,
    measure_memory: bool = True,
    profile_flops: bool = True,
) -> dict:
    check_positive(batch_sizes=list(batch_sizes), repetitions=repetitions, num_documents=num_documents,
                   query_tokens=query_tokens, new_tokens=new_tokens)  # fmt: skip
    dtype = resolve_dtype(dtype, device)
    model = _load(model_path, dtype, device)
    device = next(model.parameters()).device
    compressor_layers = model.config.get_compressor_config().num_hidden_layers
    settings = {
        "num_documents": num_documents,
        "doc_tokens": model.config.doc_max_length,
        "query_tokens": query_tokens,
        "new_tokens": new_tokens,
        "repetitions": repetitions,
        "dtype": dtype or str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "compressor": f"{model.config.compressor_type} ({compressor_layers} layers)",
        "generator_layers": model.generator.config.num_hidden_layers,
    }
    generate_kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    results = {}
    for batch_size in batch_sizes:
        questions, documents = benchmark_inputs(
            model.tokenizer, batch_size, num_documents, model.config.doc_max_length, query_tokens
        )
        _run_compressed(model, questions[:1], documents[:1], {"max_new_tokens": 2})  # warm-up
        _run_uncompressed(model, questions[:1], documents[:1], {"max_new_tokens": 2})
        runs = {"compressed": [], "uncompressed": []}
        progress = logging.tqdm(total=2 * repetitions, desc=f"benchmark batch {batch_size}", unit="run")
        for _ in range(repetitions):  # interleaved
            for system, run in (("compressed", _run_compressed), ("uncompressed", _run_uncompressed)):
                _synchronize(device)
                runs[system].append(run(model, questions, documents, generate_kwargs))
                _synchronize(device)
                progress.update(1)
        progress.close()
        entry = {
            "compressed_seconds": statistics.median(r["seconds"] for r in runs["compressed"]),
            "compressor_seconds": statistics.median(r["compressor_seconds"] for r in runs["compressed"]),
            "generator_seconds": statistics.median(r["generator_seconds"] for r in runs["compressed"]),
            "uncompressed_seconds": statistics.median(r["seconds"] for r in runs["uncompressed"]),
            "all_runs": runs,
            "flops_analytic": analytic_flops(model, questions, documents, new_tokens),
        }
        entry["speedup"] = entry["uncompressed_seconds"] / entry["compressed_seconds"]
        if profile_flops and device.type == "cpu" and batch_size == min(batch_sizes):  # one profiled run per system
            entry["flops_profiler"] = _profiled_flops(model, questions, documents, generate_kwargs)
        results[str(batch_size)] = entry

    if measure_memory:
        probe_settings = {**settings, "dtype": dtype, "device": str(device) if device.type != "cpu" else None}
        for batch_size in batch_sizes:
            memory = {}
            for system in ("compressed", "uncompressed"):
                if device.type == "cuda":  # the allocator's peak is exact and resettable: no fresh process needed
                    memory[system] = _memory_in_process(model, system, batch_size, probe_settings)
                else:  # resident memory only grows: one fresh process per setting
                    memory[system] = _probe_in_subprocess(
                        "memory_probe", str(model_path), system, batch_size, probe_settings
                    )
            memory["ratio"] = memory["compressed"] / memory["uncompressed"] if memory["uncompressed"] else None
            results[str(batch_size)]["peak_memory_mib"] = memory

    summary = {
        "settings": settings,
        "per_batch_size": {
            b: {
                "speedup": round(r["speedup"], 3),
                "compressed_seconds": round(r["compressed_seconds"], 3),
                "compressor_seconds": round(r["compressor_seconds"], 3),
                "generator_seconds": round(r["generator_seconds"], 3),
                "uncompressed_seconds": round(r["uncompressed_seconds"], 3),
                "flops_ratio_analytic": round(r["flops_analytic"]["ratio"], 3),
                **({"flops_ratio_profiler": round(r["flops_profiler"]["ratio"], 3)} if "flops_profiler" in r else {}),
                **(
                    {"peak_memory_mib": {k: round(v, 1) for k, v in r["peak_memory_mib"].items() if v is not None}}
                    if "peak_memory_mib" in r
                    else {}
                ),  # fmt: skip
            }
            for b, r in results.items()
        },
    }
    result = {"summary": summary, "details": results}
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.json").write_text(json.dumps(result, indent=2))
        plot_benchmark(summary, out / "benchmark.png")
    return result


def _probe_in_subprocess(probe: str, *arguments) -> float | None:
    """Run `scaledown.evaluation.benchmark.<probe>(*arguments)` in a fresh process (resident memory only grows) and
    return its peak memory in MiB, or `None` (with a warning) if it failed. Arguments travel as JSON."""
    code = (
        "import json, sys; from scaledown.evaluation import benchmark; "
        f"print(json.dumps(benchmark.{probe}(*json.loads(sys.argv[1]))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps([str(a) if isinstance(a, Path) else a for a in arguments])],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if result.returncode != 0:
        logger.warning(f"Memory probe {probe}{arguments[-3:-1]} failed: {result.stderr[-1000:]}")
        return None
    return float(result.stdout.strip().splitlines()[-1])


def plot_benchmark(summary: dict, path) -> None:
    """Bars: wall time (compressor + generator vs uncompressed), speed-up, peak memory, per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = summary["per_batch_size"]
    sizes = list(per)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = range(len(sizes))
    axes[0].bar([i - 0.2 for i in x], [per[b]["compressor_seconds"] for b in sizes], 0.4, label="compressor")
    axes[0].bar(
        [i - 0.2 for i in x],
        [per[b]["generator_seconds"] for b in sizes],
        0.4,
        bottom=[per[b]["compressor_seconds"] for b in sizes],
        label="generator (compressed)",
    )
    axes[0].bar([i + 0.2 for i in x], [per[b]["uncompressed_seconds"] for b in sizes], 0.4, label="uncompressed")
    axes[0].set_xticks(list(x), [f"batch {b}" for b in sizes])
    axes[0].set_ylabel("seconds (median)")
    axes[0].set_title("Wall time")
    axes[0].legend(fontsize=8)
    axes[1].bar(list(x), [per[b]["speedup"] for b in sizes], color="tab:green", label="wall time")
    axes[1].plot(list(x), [per[b]["flops_ratio_analytic"] for b in sizes], "ko--", label="FLOPs (analytic)")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set_xticks(list(x), [f"batch {b}" for b in sizes])
    axes[1].set_title("Speed-up (uncompressed / compressed)")
    axes[1].legend(fontsize=8)
    if all("peak_memory_mib" in per[b] for b in sizes):
        axes[2].bar([i - 0.2 for i in x], [per[b]["peak_memory_mib"].get("compressed", 0) for b in sizes], 0.4,
                    label="compressed")  # fmt: skip
        axes[2].bar([i + 0.2 for i in x], [per[b]["peak_memory_mib"].get("uncompressed", 0) for b in sizes], 0.4,
                    label="uncompressed")  # fmt: skip
        axes[2].set_xticks(list(x), [f"batch {b}" for b in sizes])
        axes[2].set_ylabel("MiB above the loaded model")
        axes[2].set_title("Peak memory")
        axes[2].legend(fontsize=8)
    else:
        axes[2].axis("off")
    settings = summary["settings"]
    fig.suptitle(
        f"{settings['compressor']} compressor, {settings['num_documents']} docs x {settings['doc_tokens']} tokens, "
        f"{settings['query_tokens']}-token query, {settings['new_tokens']} new tokens, {settings['device']} "
        f"{settings['dtype']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _user_compressed(model, questions, documents, tokens):
    return model.generate_from_text(questions, documents, max_new_tokens=tokens, min_new_tokens=tokens)


def _user_uncompressed(plain, tokenizer, config, questions, documents, tokens):
    from ..processing_scaledown import build_generator_inputs, raw_document_segments

    segments = raw_document_segments(tokenizer, config, documents)
    inputs = build_generator_inputs(tokenizer, config, questions, segments, padding_side="left")
    device = next(plain.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return plain.generate(
        **{k: v.to(device) for k, v in inputs.items()},
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )


def _user_offline(offline, stored: dict, questions, documents, tokens):
    """An offline model answering from stored vectors: the documents' vectors are looked up (computed once, before
    the timing, as `scaledown index` would have), only the generator runs."""
    key = (tuple(questions), tuple(tuple(d) for d in documents))
    if key not in stored:
        stored.clear()
        stored[key] = offline.compress_for_questions(questions, documents)
    return offline.generate_from_compressed(questions, stored[key], max_new_tokens=tokens, min_new_tokens=tokens)


def _user_pruned(pruner, plain, tokenizer, config, questions, documents, tokens):
    """The sentence-pruning baseline: prune each document to the budget (sentence encoder), then plain `generate`."""
    pruned = [pruner.prune(q, d) for q, d in zip(questions, documents)]
    return _user_uncompressed(plain, tokenizer, config, questions, pruned, tokens)


def user_stages(model, questions, documents, tokens: int, device) -> dict[str, float]:
    """Where the compressed user path spends its time, stage by stage (seconds, one run each): `compress_documents`
    (tokenisation + compressor), the prompt build + prefill (a 1-token answer from the compressed documents), and the
    decoding of the remaining `tokens - 1` tokens (the full answer minus the first token)."""

    def timed(call):
        _synchronize(device)
        began = time.perf_counter()
        result = call()
        _synchronize(device)
        return result, time.perf_counter() - began

    compressed, compress = timed(lambda: model.compress_for_questions(questions, documents))
    _, first = timed(lambda: model.generate_from_compressed(questions, compressed, max_new_tokens=1, min_new_tokens=1))
    _, full = timed(
        lambda: model.generate_from_compressed(questions, compressed, max_new_tokens=tokens, min_new_tokens=tokens)
    )
    return {
        "compress_documents": round(compress, 4),
        "prompt_and_prefill": round(first, 4),
        "decode": round(max(full - first, 0.0), 4),
    }


def decode_bound(uncompressed_seconds: float, stages: dict[str, float]) -> float | None:
    """The highest speed-up any compression could give on this setting: the uncompressed answer's time over the
    compressed path's decoding alone (as if compression, prompt and prefill cost nothing). Decoding a token reads every
    weight on either side, so where decoding dominates (batch 1 on a CPU), this ceiling, not the FLOPs ratio, caps the
    speed-up."""
    decode = stages.get("decode")
    return round(uncompressed_seconds / decode, 3) if decode else None


def _load_user_path(model_path, generator, dtype: str, device, systems=("compressed", "uncompressed")):
    """What a user loads: the ScaleDown folder, and the plain generator next to it, each as documented."""
    from transformers import AutoModelForCausalLM

    from ..modeling_scaledown import ScaleDownForCausalLM

    model = ScaleDownForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    plain = None
    if "uncompressed" in systems:
        name = generator or model.config.generator_name_or_path
        plain = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, dtype)).eval()
    if device:
        model.to(device)
        if plain is not None:
            plain.to(device)
    runs = {"compressed": functools.partial(_user_compressed, model)}
    if plain is not None:
        runs["uncompressed"] = functools.partial(_user_uncompressed, plain, model.tokenizer, model.config)
    if "compressed" not in systems:  # the probe of the baseline keeps only the tokenizer side of the ScaleDown model
        del runs["compressed"]
    return model, plain, runs


def user_memory_probe(model_path, generator, system: str, batch_size: int, settings: dict) -> float:
    """Peak memory (MiB above the loaded models) of one user-path setting, run once in this (fresh) process."""
    model, plain, runs = _load_user_path(
        model_path, generator, settings["dtype"], settings.get("device"), systems=(system,)
    )
    questions, documents = benchmark_inputs(
        model.tokenizer, batch_size, settings["num_documents"], model.config.doc_max_length, settings["query_tokens"]
    )
    device = next(model.parameters()).device
    make_resident(model if system == "compressed" else plain)
    with PeakMemory(device) as peak:
        runs[system](questions, documents, settings["new_tokens"])
    return peak.peak_mib


def run_user_benchmark(
    model_path,
    generator=None,
    batch_sizes=(1, 16),
    dtypes=("float32", "bfloat16"),
    repetitions: int = 3,
    num_documents: int = 10,
    query_tokens: int = 128,
    new_tokens: int = 32,
    device=None,
    output_dir=None,
    measure_memory: bool = True,
    extra_systems=(),
    offline_model=None,
) -> dict:
    """The path a user takes, no private switches on either side: `ScaleDownForCausalLM.from_pretrained(folder,
    dtype=...)` + `generate_from_text`, against `AutoModelForCausalLM.from_pretrained(generator, dtype=...)` +
    `generate` on the raw documents in the same chat prompt (same process, interleaved).

    Per dtype and batch size: medians of `repetitions` interleaved runs of an answer of exactly `new_tokens` tokens
    and of the time to first token (prefill + one token), the analytic FLOPs ratio (the limit the speed-up would reach
    if time followed FLOPs), where the compressed path's time goes ([`user_stages`]: compression, prompt + prefill,
    decoding) and the ceiling that decoding alone sets ([`decode_bound`]), and peak memory (a fresh process per setting
    on CPU; the allocator's peak on CUDA).

    `extra_systems` adds, timed in the same interleaved runs (full answers only, no memory probe):
    `"offline"`: an offline model (`offline_model`, default: the same weights loaded with `query_dependent=False`,
    which costs the same) answering from stored vectors (`offline_seconds`, compression excluded) and compressing
    first (`offline_with_compression_seconds`); `"pruned"`: the sentence-pruning baseline at the model's rate
    (all-MiniLM-L6-v2 offline) followed by plain `generate` (`pruned_seconds`, pruning included). Each gets its
    speed-up over the uncompressed generator and its analytic FLOPs ratio (the sentence encoder's FLOPs excluded).

    Args:
        model_path: a saved ScaleDown folder (or hub id).
        generator: the base generator to compare with (default: the folder's `generator_name_or_path`).
    """
    unknown = sorted(set(extra_systems) - {"offline", "pruned"})
    if unknown:
        raise ValueError(f"Unknown extra systems {unknown}: choose from offline, pruned.")
    check_positive(batch_sizes=list(batch_sizes), repetitions=repetitions, num_documents=num_documents,
                   query_tokens=query_tokens, new_tokens=new_tokens)  # fmt: skip
    settings = {
        "path": "user",
        "num_documents": num_documents,
        "query_tokens": query_tokens,
        "new_tokens": new_tokens,
        "repetitions": repetitions,
        "device": str(device or "cpu"),
        "threads": torch.get_num_threads(),
    }
    results = {}
    for dtype in dtypes:
        model, _, runs = _load_user_path(model_path, generator, dtype, device)
        where = next(model.parameters()).device
        offline = pruner = None
        if "offline" in extra_systems:
            from ..modeling_scaledown import ScaleDownForCausalLM

            twin = {} if offline_model else {"query_dependent": False}  # same weights, offline reading
            offline = ScaleDownForCausalLM.from_pretrained(
                offline_model or model_path, dtype=getattr(torch, dtype), **twin
            ).to(where)
            runs["offline"] = functools.partial(_user_offline, offline, {})
            runs["offline_with_compression"] = functools.partial(_user_compressed, offline)
        if "pruned" in extra_systems:
            from .pruning import SentencePruner

            pruner = SentencePruner.for_model(model)
            pruner.encoder.to(where)
            plain = runs["uncompressed"].args[0]
            runs["pruned"] = functools.partial(_user_pruned, pruner, plain, model.tokenizer, model.config)
        settings["compressor"] = model.config.compressor_type
        settings["doc_tokens"] = model.config.doc_max_length
        settings["attention"] = getattr(model.generator.config, "_attn_implementation", None)
        per_batch = {}
        for batch_size in batch_sizes:
            questions, documents = benchmark_inputs(
                model.tokenizer, batch_size, num_documents, model.config.doc_max_length, query_tokens
            )
            for run in runs.values():  # warm-up
                run(questions[:1], documents[:1], 2)
            if offline is not None:  # the store: vectors computed before the timing
                runs["offline"](questions, documents, 1)

            def kinds(name):  # the first token is timed for the two main systems
                first = (("first_token_seconds", 1),) if name in ("compressed", "uncompressed") else ()
                return (("seconds", new_tokens), *first)

            times = {f"{s}_{kind}": [] for s in runs for kind, _ in kinds(s)}
            progress = logging.tqdm(
                total=len(times) * repetitions, desc=f"user path {dtype} batch {batch_size}", unit="run"
            )
            for _ in range(repetitions):  # interleaved
                for name, run in runs.items():
                    for kind, tokens in kinds(name):
                        _synchronize(where)
                        began = time.perf_counter()
                        run(questions, documents, tokens)
                        _synchronize(where)
                        times[f"{name}_{kind}"].append(time.perf_counter() - began)
                        progress.update(1)
            progress.close()
            entry = {k: round(statistics.median(v), 4) for k, v in times.items()}
            entry["speedup"] = round(entry["uncompressed_seconds"] / entry["compressed_seconds"], 3)
            entry["first_token_speedup"] = round(
                entry["uncompressed_first_token_seconds"] / entry["compressed_first_token_seconds"], 3
            )
            flops = analytic_flops(model, questions, documents, new_tokens)
            entry["flops_ratio_analytic"] = round(flops["ratio"], 3)
            for name in runs:
                if name not in ("compressed", "uncompressed"):
                    entry[f"{name}_speedup"] = round(entry["uncompressed_seconds"] / entry[f"{name}_seconds"], 3)
            if offline is not None:
                offline_flops = analytic_flops(offline, questions, documents, new_tokens)
                entry["offline_flops_ratio_analytic"] = round(
                    flops["uncompressed"] / offline_flops["compressed_generator"], 3
                )
                entry["offline_with_compression_flops_ratio_analytic"] = round(offline_flops["ratio"], 3)
            if pruner is not None:
                pruned = [pruner.prune(q, d) for q, d in zip(questions, documents)]
                pruned_flops = analytic_flops(model, questions, pruned, new_tokens)["uncompressed"]
                entry["pruned_flops_ratio_analytic"] = round(flops["uncompressed"] / pruned_flops, 3)
            stages = [user_stages(model, questions, documents, new_tokens, where) for _ in range(repetitions)]
            entry["compressed_stages_seconds"] = {
                stage: round(statistics.median(s[stage] for s in stages), 4) for stage in stages[0]
            }
            entry["decode_bound"] = decode_bound(entry["uncompressed_seconds"], entry["compressed_stages_seconds"])
            entry["all_runs"] = {k: [round(t, 4) for t in v] for k, v in times.items()}
            per_batch[str(batch_size)] = entry
        del model, runs, offline, pruner
        gc.collect()
        if where.type == "cuda":
            torch.cuda.empty_cache()
        if measure_memory:
            probe = {**settings, "dtype": dtype, "device": str(device) if device else None}
            for batch_size in batch_sizes:
                memory = {}
                for system in ("compressed", "uncompressed"):
                    if where.type == "cuda":
                        memory[system] = user_memory_probe(model_path, generator, system, batch_size, probe)
                    else:
                        memory[system] = _probe_in_subprocess(
                            "user_memory_probe", str(model_path), generator, system, batch_size, probe
                        )
                if memory["compressed"] is not None and memory["uncompressed"]:
                    memory["ratio"] = memory["compressed"] / memory["uncompressed"]
                per_batch[str(batch_size)]["peak_memory_mib"] = {
                    k: round(v, 3 if k == "ratio" else 1) for k, v in memory.items() if v is not None
                }
        results[dtype] = per_batch
        logger.info(f"user path {dtype}: {json.dumps({b: e['speedup'] for b, e in per_batch.items()})}")
    result = {"settings": settings, "per_dtype": results}
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark-user.json").write_text(json.dumps(result, indent=2))
        from ..report import user_benchmark_markdown

        (out / "benchmark-user.md").write_text(user_benchmark_markdown(result))
        plot_user_benchmark(result, out / "benchmark-user.png")
    return result


def plot_user_benchmark(result: dict, path) -> None:
    """Speed-up of a full answer and of the first token, with the analytic FLOPs limit, per dtype and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_dtype = result["per_dtype"]
    fig, axes = plt.subplots(1, len(per_dtype), figsize=(5.5 * len(per_dtype), 4), squeeze=False)
    for axis, (dtype, per_batch) in zip(axes[0], per_dtype.items()):
        sizes = list(per_batch)
        x = range(len(sizes))
        axis.bar([i - 0.2 for i in x], [per_batch[b]["speedup"] for b in sizes], 0.4, label="answer")
        axis.bar([i + 0.2 for i in x], [per_batch[b]["first_token_speedup"] for b in sizes], 0.4, label="first token")
        axis.plot(list(x), [per_batch[b]["flops_ratio_analytic"] for b in sizes], "ko--", label="FLOPs (analytic)")
        axis.axhline(1.0, color="grey", lw=0.8)
        axis.set_xticks(list(x), [f"batch {b}" for b in sizes])
        axis.set_title(f"{dtype}: uncompressed / ScaleDown time")
        axis.legend(fontsize=8)
    settings = result["settings"]
    fig.suptitle(
        f"User path on {settings['device']}: {settings['num_documents']} docs x {settings['doc_tokens']} tokens, "
        f"{settings['query_tokens']}-token query, {settings['new_tokens']} new tokens"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
