# Copyright 2026 The ScaleDown Authors. Licensed under the Apache License, Version 2.0.
"""The generator's LoRA adapters of a ScaleDown model, and the model's lock.

Hub remote code beside `modeling_scaledown.py` (which imports it): torch, transformers and, guarded, peft only.
[`ScaleDownAdapterMixin`] injects the adapters from `config.lora_config`, folds them into the generator's weights for
inference and takes them out for training and saving, and switches them off for the uncompressed baseline, all
through peft's own `BaseTunerLayer` API.
"""

import contextlib
import functools
import threading
import weakref

import torch
from torch import nn
from transformers.utils import is_peft_available


# One re-entrant lock per model for its shared state: the generator's adapters (folded in, taken out or switched off),
# the memory-injection hook and the tokenizers (a fast tokenizer's truncation settings are per-object state: two
# threads tokenising at once fail with "Already borrowed"). Compression, generation, the forward pass and the
# uncompressed baseline hold it while they run, so threads sharing a model are served one call at a time. Kept outside
# the module, so that models stay deep-copyable and picklable.
_MODEL_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


def _merged_forward(layer: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward of a peft adapter layer whose adapters are folded into its base layer (see `_bypass_merged`): the
    base layer alone computes it. Anything else (adapters unmerged or switched off since, peft's per-call options such
    as `adapter_names`) takes peft's own forward."""
    if layer.merged and not layer.disable_adapters and not kwargs:
        return layer.base_layer(x, *args)
    return type(layer).forward(layer, x, *args, **kwargs)


def _bypass_merged(layer: nn.Module, bypass: bool) -> None:
    """Route `layer`'s calls straight to its base layer while its adapters are merged (`bypass=True`), or back to
    peft's forward. peft's forward of a merged layer computes the same thing after per-call argument checks and
    adapter bookkeeping: SmolLM2 has 210 adapted linear layers, and that bookkeeping cost 3.6 ms of a 68 ms float32
    decoding step at batch 1 (`ScaleDown`'s own overhead: the plain generator has no adapters). A `partial` (not a
    closure), so that deep copies and pickles of the model call their own layers."""
    if bypass:
        layer.forward = functools.partial(_merged_forward, layer)
    else:
        layer.__dict__.pop("forward", None)


def serialised(method):
    """Run a public method of the model under its lock (see `_MODEL_LOCKS`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with model_lock(self):
            return method(self, *args, **kwargs)

    return wrapper


class ScaleDownAdapterMixin:
    """LoRA adapters of `self.generator` (peft), for [`ScaleDownForCausalLM`]: injection, the default trainable set,
    folding for inference (`merge_adapters` / `unmerge_adapters`, automatic around `eval()` / `train()` / saving) and
    the adapters-off context of the uncompressed baseline. Needs `self.config` (`use_lora`, `lora_config`,
    `merge_adapters_for_inference`), `self.generator` and the compressor-side modules."""

    def _inject_lora(self):
        if not is_peft_available():
            raise ImportError(
                "This ScaleDown model uses LoRA (`use_lora=True`), which needs peft: `pip install peft`."
            )
        from peft import LoraConfig, inject_adapter_in_model

        lora_config = LoraConfig(**{"bias": "none", **self.config.lora_config})
        inject_adapter_in_model(lora_config, self.generator)
        # The generator is already initialised: keep its init function away from the fresh adapters (LoRA B must stay
        # zero). Under `from_pretrained` (meta tensors) the weights come from the checkpoint instead.
        for module in self._adapter_modules():
            for sub in module.modules():
                if any(p.device.type == "meta" for p in sub.parameters(recurse=False)):
                    continue
                sub._is_hf_initialized = True
                for param in sub.parameters(recurse=False):
                    param._is_hf_initialized = True

    def _set_trainable(self):
        """Freeze the generator except its LoRA adapters; compressor, projector and reranking head train fully."""
        self.generator.requires_grad_(False)
        if self.config.use_lora:
            for layer in self._lora_layers():
                layer.set_adapter(layer.active_adapters)  # peft: the active adapters' weights train
        for module in (self.compressor, self.projector, self.rerank_head, self.slot_scorer, self.slot_selector):
            if module is not None:
                module.requires_grad_(True)

    def train(self, mode: bool = True) -> "ScaleDownAdapterMixin":
        """`nn.Module.train`; training mode takes folded LoRA adapters back out of the generator's weights."""
        with model_lock(self):
            super().train(mode)
            if mode:
                self.unmerge_adapters()
        return self

    def state_dict(self, *args, **kwargs):
        """The weights with the LoRA adapters unmerged (base weights + adapters, as checkpoints store them)."""
        self.unmerge_adapters()
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        """Load unmerged weights (as [`state_dict`] gives them): folded adapters are taken out first."""
        self.unmerge_adapters()
        return super().load_state_dict(state_dict, *args, **kwargs)

    def _merge_for_inference(self) -> None:
        """Fold the LoRA adapters into the generator before generating in eval mode (see
        `config.merge_adapters_for_inference`)."""
        if not self.training and self.config.merge_adapters_for_inference and not self._adapters_disabled:
            self.merge_adapters()

    def _lora_layers(self) -> list[nn.Module]:
        """The generator's adapter layers (peft's `BaseTunerLayer`); none without peft or adapters."""
        if not is_peft_available():
            return []
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.generator.modules() if isinstance(m, BaseTunerLayer)]

    def _adapter_modules(self) -> list[nn.Module]:
        """The modules holding adapter weights (peft's `adapter_layer_names` of each adapter layer: `lora_A`, ...)."""
        modules = []
        for layer in self._lora_layers():
            modules += [getattr(layer, name) for name in layer.adapter_layer_names if hasattr(layer, name)]
        return modules

    @property
    def adapters_merged(self) -> bool:
        """Whether the LoRA adapters are currently merged into the generator's weights (see `merge_adapters`)."""
        return any(getattr(layer, "merged", False) for layer in self._lora_layers())

    def merge_adapters(self) -> "ScaleDownAdapterMixin":
        """Fold the LoRA adapters into the generator's weights for inference: same outputs up to float rounding,
        faster decoding (no adapter matmuls). Undo with `unmerge_adapters` before training or saving."""
        with model_lock(self):
            for layer in self._lora_layers():
                if not layer.merged:
                    layer.merge()
                _bypass_merged(layer, True)
        return self

    def unmerge_adapters(self) -> "ScaleDownAdapterMixin":
        """Take merged LoRA adapters back out of the generator's weights (exact up to float rounding)."""
        with model_lock(self):
            for layer in self._lora_layers():
                _bypass_merged(layer, False)
                if layer.merged:
                    layer.unmerge()
        return self

    @contextlib.contextmanager
    def generator_adapters_disabled(self):
        """Context in which the generator runs without its LoRA adapters, i.e. as the base generator. Re-entrant: an
        inner use inside an outer one changes nothing (callers can keep the adapters off across several calls). Holds
        the model's lock: other threads' calls wait until the block ends."""
        with model_lock(self):
            if self._adapters_disabled:
                yield self.generator
                return
            with self._adapters_switched_off():
                yield self.generator

    @contextlib.contextmanager
    def _adapters_switched_off(self):
        """Unfold and switch off the adapters for the block; restore both (and trainability) afterwards."""
        merged = self.adapters_merged
        self.unmerge_adapters()
        trainable = {param: param.requires_grad for param in self.parameters()}
        layers = self._lora_layers()
        for layer in layers:
            layer.enable_adapters(False)
        self._adapters_disabled = True
        try:
            yield self.generator
        finally:
            self._adapters_disabled = False
            for layer in layers:
                layer.enable_adapters(True)
            for param, flag in trainable.items():  # peft's switch sets the adapters trainable: restore as it was
                param.requires_grad_(flag)
            if merged:
                self.merge_adapters()

    def _adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the base generator's frozen weights (its LoRA adapters and embeddings are kept)."""
        embeddings = {id(self.generator.get_input_embeddings().weight)}
        output = self.generator.get_output_embeddings()
        if output is not None:
            embeddings.add(id(output.weight))
        adapters = {id(p) for module in self._adapter_modules() for p in module.parameters()}
        keep = {}
        for name, param in self.state_dict(keep_vars=True).items():
            if not name.startswith("generator.") or id(param) in adapters or id(param) in embeddings:
                keep[name] = param.detach()
        return keep
