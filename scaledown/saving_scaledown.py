# Copyright 2026 The ScaleDown Authors. Licensed under the Apache License, Version 2.0.
"""Saving, exporting and uploading a ScaleDown model.

Hub remote code beside `modeling_scaledown.py` (which imports it): torch and transformers only.
[`ScaleDownSavingMixin`] writes a folder atomically (weights, configuration, remote code, both tokenizers and the
processor, optionally the model card), writes the light adapter-only export and loads the base generator it refers
to, and uploads a folder in one commit.
"""

import fnmatch
import os
import shutil
import tempfile

from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging

from .configuration_scaledown import ScaleDownConfig
from .processing_scaledown import COMPRESSOR_TOKENIZER_FOLDER


logger = logging.get_logger(__name__)


# Weight names of folders saved before the projector was a named module (`projection = nn.Sequential(...)`).
LEGACY_KEY_MAPPING = {r"^projection\.0\.": "projector.linear_1.", r"^projection\.2\.": "projector.linear_2."}


def checkpoint_weight_names(path: str, subfolder: str, hub_kwargs: dict) -> set[str]:
    """The weight names a saved folder (local or on the hub) holds, sharded or not, under today's names
    ([`LEGACY_KEY_MAPPING`])."""
    import json
    import re

    from transformers.utils import cached_file

    index = cached_file(
        path, "model.safetensors.index.json", subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
        **hub_kwargs,
    )  # fmt: skip
    if index is not None:
        with open(index) as handle:
            names = set(json.load(handle)["weight_map"])
    else:
        with open(cached_file(path, "model.safetensors", subfolder=subfolder, **hub_kwargs), "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")  # safetensors: header length, then the JSON header
            names = set(json.loads(handle.read(size))) - {"__metadata__"}
    for pattern, replacement in LEGACY_KEY_MAPPING.items():
        names = {re.sub(pattern, replacement, name) for name in names}
    return names


# What a ScaleDown save writes (and so owns) in its folder: weights (one file or shards + index), configurations,
# remote code, tokenizer files, the model card and the compressor's tokenizer folder.
_OWNED_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "configuration_scaledown.py", "modeling_scaledown.py", "processing_scaledown.py",
    "adapters_scaledown.py", "saving_scaledown.py",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
    "README.md", COMPRESSOR_TOKENIZER_FOLDER,
)  # fmt: skip


def _owned(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in _OWNED_FILES)


def _install_folder(staging: str, target: str) -> None:
    """Put the freshly written folder `staging` in place of `target`. A target that is missing, empty or holds only
    files a ScaleDown save owns is swapped whole (two renames: a crash leaves either the old or the new folder, plus a
    hidden leftover); otherwise (e.g. a training output folder that also holds checkpoints) each new file replaces its
    namesake and owned files of an earlier save that this one did not write (stale shards or index, another
    compressor's tokenizer, an old card) are removed, and files the model does not own are kept."""
    if not os.path.exists(target) or all(_owned(name) for name in os.listdir(target)):
        previous = None
        if os.path.exists(target):
            parent = os.path.dirname(os.path.abspath(target))
            previous = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.previous-", dir=parent)
            os.rmdir(previous)  # a free name next to the target, for the old folder
            os.replace(target, previous)
        os.replace(staging, target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return
    written = set(os.listdir(staging))
    for name in sorted(written, key=lambda n: n == "model.safetensors.index.json"):  # the index last
        destination = os.path.join(target, name)
        if os.path.isdir(destination) and not os.path.islink(destination):
            shutil.rmtree(destination)
        os.replace(os.path.join(staging, name), destination)
    for name in os.listdir(target):
        if name not in written and _owned(name):
            path = os.path.join(target, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def grow_vocabulary(model: PreTrainedModel, size: int) -> None:
    """Make room for added tokens (never shrinks a vocabulary padded beyond the tokenizer)."""
    current = model.get_input_embeddings().weight.shape[0]
    if size > current:
        model.resize_token_embeddings(size)


class ScaleDownSavingMixin:
    """`save_pretrained` / `push_to_hub` of [`ScaleDownForCausalLM`] (and the adapter-only export's base generator
    for its `from_pretrained`). The `scaledown` package sets `model_card_writer` and `folder_pusher`; plain remote
    code has neither and falls back to transformers' own upload."""

    # Set by the `scaledown` package (absent from Hub remote code): model-card writer and one-commit folder upload.
    model_card_writer = None
    folder_pusher = None

    def save_pretrained(
        self, save_directory, *args, model_card: dict | bool | None = None, adapter_only: bool = False, **kwargs
    ):
        """Save weights (safetensors), configuration, both code files (Hub remote code) and both tokenizers.

        The compressor's tokenizer goes to the `compressor_tokenizer/` subfolder when it differs from the
        generator's. `model_card=True` (or a run report dict, e.g. `run.json` of `scaledown demo`) also writes the
        Hub model card (`README.md`), which needs the `scaledown` package. `push_to_hub=True` uploads the folder in
        one commit afterwards (see `push_to_hub`).

        `adapter_only=True` writes a light export: compressor, projector, reranking head, the generator's LoRA
        adapters and its (extended) embeddings, with the base generator referenced by `config.generator_name_or_path`
        (a hub id, or a folder). It loads like a full export wherever that base generator is reachable or cached.
        """
        push = kwargs.pop("push_to_hub", False)
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "private", "revision", "create_pr", "commit_message",
                                                 "token") if k in kwargs}  # fmt: skip
        if kwargs.get("safe_serialization") is False:
            raise ValueError("ScaleDown checkpoints are saved as safetensors only; drop `safe_serialization=False`.")
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(
            {
                "AutoConfig": "configuration_scaledown.ScaleDownConfig",
                "AutoModel": "modeling_scaledown.ScaleDownForCausalLM",
                "AutoModelForCausalLM": "modeling_scaledown.ScaleDownForCausalLM",
            }
        )
        self.config.auto_map = auto_map
        if self.config._auto_class is None:
            self.config._auto_class = "AutoConfig"
        if adapter_only:
            kwargs["state_dict"] = self._adapter_state_dict()
            self.config.adapter_only = True
        if not kwargs.get("is_main_process", True):  # only the main process writes
            return super().save_pretrained(save_directory, *args, **kwargs)
        # Everything is written into a temporary sibling folder first, then installed (see `_install_folder`): a save
        # that fails halfway leaves the previous folder untouched, and files of an earlier, different save go.
        target = os.path.normpath(str(save_directory))
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        staging = tempfile.mkdtemp(
            prefix=f".{os.path.basename(target)}.saving-", dir=os.path.dirname(os.path.abspath(target))
        )
        try:
            try:
                super().save_pretrained(staging, *args, **kwargs)
            finally:
                if adapter_only:
                    del self.config.adapter_only
            if self.tokenizer is not None and self.compressor_tokenizer is not None:
                self.processor.save_pretrained(staging)  # both tokenizers + processor_config.json
            elif self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            if model_card:
                writer = type(self).model_card_writer
                if writer is None:
                    logger.warning("Writing a model card needs the `scaledown` package: `pip install scaledown`.")
                else:
                    writer(staging, model_card if isinstance(model_card, dict) else None)
            _install_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push:
            repo_id = hub_kwargs.pop("repo_id", None) or os.path.basename(os.path.normpath(str(save_directory)))
            self._push_folder(str(save_directory), repo_id, model_card, **hub_kwargs)

    def _push_folder(self, folder: str, repo_id: str, model_card=None, **hub_kwargs):
        pusher = type(self).folder_pusher
        if pusher is None:
            raise ImportError("Uploading a ScaleDown folder needs the `scaledown` package: `pip install scaledown`.")
        run = model_card if isinstance(model_card, dict) else None
        return pusher(folder, repo_id, run=run, **hub_kwargs)

    def push_to_hub(self, repo_id: str, *args, model_card: dict | None = None, **kwargs):
        """Upload weights, code, tokenizers and the model card (from `model_card`, a run report, when given) in one
        commit. Takes `private`, `revision`, `create_pr`, `commit_message`, `token` (else `HF_TOKEN`). Without the
        `scaledown` package (plain remote code) this is `PreTrainedModel.push_to_hub`."""
        if type(self).folder_pusher is None:
            return super().push_to_hub(repo_id, *args, **kwargs)
        hub_kwargs = {
            k: kwargs[k] for k in ("private", "revision", "create_pr", "commit_message", "token") if k in kwargs
        }
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return self._push_folder(folder, repo_id, model_card, **hub_kwargs)

    @classmethod
    def _adapter_only_base(cls, config: ScaleDownConfig, kwargs: dict) -> PreTrainedModel:
        """The base generator an adapter-only export refers to, loaded with the export's `dtype` / `device_map`,
        its vocabulary grown to the export's; its weights are marked initialised, so that `from_pretrained` leaves
        them as they are when it fills in the export's own weights around them."""
        generator_kwargs = {k: kwargs[k] for k in ("dtype", "torch_dtype", "device_map") if k in kwargs}
        try:
            generator = AutoModelForCausalLM.from_pretrained(config.generator_name_or_path, **generator_kwargs)
        except OSError as error:
            raise OSError(
                f"This adapter-only ScaleDown export needs its base generator {config.generator_name_or_path!r}, "
                f"which could not be loaded (not cached, hub unreachable?): {error}"
            ) from error
        grow_vocabulary(generator, config.get_generator_config().vocab_size)
        for module in generator.modules():
            module._is_hf_initialized = True
            for param in module.parameters(recurse=False):
                param._is_hf_initialized = True
        return generator
