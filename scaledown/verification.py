"""`scaledown verify FOLDER`: check a saved ScaleDown folder against its own configuration, without loading weights.

safetensors files carry no checksum, and `from_pretrained` reports only what breaks the load. This reads the
configuration, builds the model it describes on the `meta` device (no memory, no weights), and compares every tensor
of the weight files (their headers only) with it: missing, unexpected, wrong shape, mixed dtypes; then the
tokenizers against the configuration's vocabulary and reserved token ids. It also prints each weight file's SHA-256,
to compare with the hub's (its LFS pointer) or a checksum published with the model.
"""

import hashlib
import json
import os
from pathlib import Path

import torch


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored_tensors(folder: Path) -> tuple[dict[str, tuple[list[int], str]], list[Path], list[str]]:
    """Name -> (shape, dtype) of every tensor in the folder's safetensors files (headers only), the files, and
    problems with the files themselves (an index naming a missing shard, a pickle file)."""
    from safetensors import safe_open

    problems = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / shard for shard in shards]
        problems += [f"{f.name} is named by the index but missing" for f in files if not f.is_file()]
        files = [f for f in files if f.is_file()]
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files and not problems:
        problems.append("no model.safetensors (or sharded index) in the folder")
    problems += [f"{p.name}: a pickle weight file, which can run code when loaded" for p in folder.glob("*.bin")]
    tensors = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    view = handle.get_slice(name)
                    tensors[name] = (list(view.get_shape()), view.get_dtype())
        except Exception as error:  # safetensors raises its own error types for a broken header
            problems.append(f"{path.name} is not a readable safetensors file (truncated?): {error}")
    return tensors, files, problems


def _expected_tensors(folder: Path) -> tuple[dict[str, tuple[list[int], str]], object]:
    """Name -> (shape, dtype) of what the folder's configuration describes, built on the meta device."""
    from .configuration_scaledown import ScaleDownConfig
    from .modeling_scaledown import ScaleDownForCausalLM

    config = ScaleDownConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = ScaleDownForCausalLM(config)
    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
    codes = {dtype: code for code, dtype in names.items()}
    state = model.state_dict()
    return {name: (list(t.shape), codes.get(t.dtype, str(t.dtype))) for name, t in state.items()}, config


def verify_folder(folder: str | os.PathLike, checksums: bool = True) -> dict:
    """Check a saved ScaleDown folder (see the module doc). Returns a JSON-able report whose `ok` is True when
    nothing is wrong; `problems` lists each finding in words."""
    folder = Path(folder)
    expected, config = _expected_tensors(folder)
    stored, files, problems = _stored_tensors(folder)
    tied = getattr(config.get_generator_config(), "tie_word_embeddings", False)
    missing = [n for n in expected if n not in stored and not (tied and n.endswith("lm_head.weight"))]
    unexpected = [n for n in stored if n not in expected]
    wrong_shape = [
        f"{n}: stored {stored[n][0]}, the configuration gives {expected[n][0]}"
        for n in expected
        if n in stored and stored[n][0] != expected[n][0]
    ]
    problems += [f"missing tensor {n}" for n in missing[:20]] + [f"unexpected tensor {n}" for n in unexpected[:20]]
    problems += [f"wrong shape {w}" for w in wrong_shape[:20]]
    float_dtypes = sorted({dtype for _, dtype in stored.values() if dtype in ("F32", "BF16", "F16", "F64")})
    if len(float_dtypes) > 1:
        problems.append(f"mixed floating dtypes in the weights: {float_dtypes}")
    problems += _check_tokenizers(folder, config)
    report = {
        "folder": str(folder),
        "ok": not problems,
        "problems": problems,
        "tensors": {"stored": len(stored), "expected": len(expected), "missing": len(missing)},
        "dtypes": float_dtypes,
        "memory": {
            "injection_layer": config.memory_injection_layer,
            "slots": config.memory_slots,
            "span_windows": getattr(config, "span_windows", 1),
            "num_memory_tokens": config.num_memory_tokens,
        },
    }
    if checksums:
        report["sha256"] = {f.name: _file_sha256(f) for f in files}
    return report


def _check_tokenizers(folder: Path, config) -> list[str]:
    """The generator's tokenizer must know the memory token under the configured id, and the compressor's its
    reserved tokens; neither may outgrow the embeddings the configuration gives."""
    from transformers import AutoTokenizer

    from .processing_scaledown import COMPRESSOR_TOKENIZER_FOLDER

    problems = []
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        return [f"the generator tokenizer does not load: {error}"]
    if tokenizer.convert_tokens_to_ids(config.memory_token) != config.memory_token_id:
        problems.append(f"the tokenizer's id of {config.memory_token} is not the configured {config.memory_token_id}")
    vocab_size = config.get_generator_config().vocab_size
    if len(tokenizer) > vocab_size:
        problems.append(f"the generator tokenizer has {len(tokenizer)} tokens, the embeddings {vocab_size} rows")
    if config.compressor_type == "n_layers":
        return problems
    try:
        compressor_tokenizer = AutoTokenizer.from_pretrained(folder / COMPRESSOR_TOKENIZER_FOLDER)
    except (OSError, ValueError) as error:
        return problems + [f"the compressor tokenizer does not load: {error}"]
    ids = compressor_tokenizer.convert_tokens_to_ids(
        [config.compressor_memory_token_template.format(i + 1) for i in range(config.num_memory_tokens)]
    )
    if ids != list(config.compressor_memory_token_ids):
        problems.append("the compressor tokenizer's memory token ids differ from the configuration's")
    compressor_vocab = config.get_compressor_config().vocab_size
    if len(compressor_tokenizer) > compressor_vocab:
        problems.append(
            f"the compressor tokenizer has {len(compressor_tokenizer)} tokens, its embeddings {compressor_vocab} rows"
        )
    return problems
