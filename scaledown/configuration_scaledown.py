# Copyright 2026 The ScaleDown Authors. Licensed under the Apache License, Version 2.0.
"""ScaleDown configuration: OSCAR (Louis et al., 2025, arXiv:2504.07109) online soft compression and reranking."""

import copy
import os
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.utils import logging


logger = logging.get_logger(__name__)

COMPRESSOR_TYPES = ("n_layers", "encoder", "llm")
MEMORY_SLOTS = ("tokens", "chunk_mean", "chunk_attention", "span")
DEFAULT_GENERATOR = "mistralai/Mistral-7B-Instruct-v0.2"
DEFAULT_ENCODER = "answerdotai/ModernBERT-base"
DEFAULT_LLM_COMPRESSOR = "meta-llama/Llama-3.2-1B-Instruct"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the question briefly, using the background documents when they help."
)


_SUB_CONFIGS = ("generator_config", "compressor_config")
# Training settings that earlier versions stored in the configuration (now `ScaleDownTrainingArguments` only).
_TRAINING_POLICY = (
    "reranking_loss_weight",
    "learning_rate_generator",
    "learning_rate_compressor_nlayers",
    "learning_rate_compressor_encoder",
)


def _to_config(value: Any, name: str) -> PretrainedConfig | None:
    """A sub-configuration as a `PretrainedConfig`: kept as given, or rebuilt with `AutoConfig.for_model` from its
    dict (how `config.json` stores it)."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"`{name}` must be a PretrainedConfig, a dict or None, got {type(value).__name__}.")
    if "model_type" not in value:
        raise ValueError(f"`{name}` must name its `model_type` so that it can be rebuilt with AutoConfig.")
    value = copy.deepcopy(value)
    value.pop("transformers_version", None)
    return AutoConfig.for_model(value.pop("model_type"), **value)


def _config_dict(value: PretrainedConfig | None) -> dict | None:
    """A sub-configuration in full, as `config.json` stores it (with its `model_type`, without the version)."""
    if value is None:
        return None
    output = value.to_dict()
    output.pop("transformers_version", None)
    return output


DEFAULT_LORA_CONFIG = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": "all-linear"}
# Loose settings of earlier versions (and handy keyword shorthands) -> their `lora_config` key.
LORA_SHORTHANDS = {
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_target_modules": "target_modules",
}


class ScaleDownConfig(PretrainedConfig):
    r"""
    Configuration of a [`ScaleDownForCausalLM`]: a compressor that turns each retrieved document (read together with
    the query) into `num_memory_tokens` embeddings, a LoRA-tuned generator that answers from them, and an optional
    reranking head. Defaults follow the OSCAR paper.

    A saved configuration is self-contained: the generator's (and, for `"encoder"`/`"llm"` compressors, the
    compressor's) own configuration is stored inside, so that [`ScaleDownForCausalLM.from_pretrained`] needs no access
    to the original checkpoints.

    Args:
        generator_name_or_path (`str`, *optional*, defaults to `"mistralai/Mistral-7B-Instruct-v0.2"`):
            Hub id or folder of the generator the model was built from (provenance; used by model cards).
        generator_config (`PretrainedConfig` or `dict`, *optional*):
            Configuration of the generator causal LM, vocabulary already extended with the memory token.
        compressor_type (`str`, *optional*, defaults to `"n_layers"`):
            `"n_layers"`: a separate, fully trained copy of the generator's embeddings and first
            `num_compressor_layers` layers; `"encoder"`: any `AutoModel` encoder (ModernBERT, BERT, ...) followed by a
            2-layer MLP; `"llm"`: a small decoder LLM followed by a 2-layer MLP.
        num_compressor_layers (`int`, *optional*, defaults to 8):
            Number of generator layers copied into an `"n_layers"` compressor.
        compressor_name_or_path (`str`, *optional*):
            Hub id or folder of an `"encoder"`/`"llm"` compressor. Defaults to `"answerdotai/ModernBERT-base"` for
            encoders and `"meta-llama/Llama-3.2-1B-Instruct"` for LLM compressors; ignored for `"n_layers"`.
        compressor_config (`PretrainedConfig` or `dict`, *optional*):
            Configuration of an `"encoder"`/`"llm"` compressor (vocabulary already extended with the special tokens).
        compressor_keep_final_norm (`bool`, *optional*, defaults to `False`):
            Whether an `"n_layers"` compressor keeps the generator's final norm (OSCAR drops it).
        projection_hidden_dim (`int`, *optional*):
            Hidden width of the projector, the 2-layer MLP mapping compressor width to generator width
            (`"encoder"`/`"llm"`). Defaults to the generator's hidden size.
        projector_hidden_act (`str`, *optional*, defaults to `"relu"`):
            The projector's activation (a `transformers.activations` name; OSCAR: ReLU).
        doc_max_length (`int`, *optional*, defaults to 128):
            Document tokens read by the compressor; longer documents are truncated.
        compression_rate (`int`, *optional*, defaults to 16):
            `doc_max_length / num_memory_tokens`.
        num_memory_tokens (`int`, *optional*, defaults to 8):
            Embeddings produced per document. Give any two of `doc_max_length`, `compression_rate`,
            `num_memory_tokens` and the third is derived; an inconsistent triple is rejected.
        query_max_length (`int`, *optional*, defaults to 64):
            Query tokens read by the compressor; longer queries are truncated there (the generator reads them whole).
        query_dependent (`bool`, *optional*, defaults to `True`):
            `True`: online compression (OSCAR), the compressor reads each document together with the query. `False`:
            offline compression (PISCO/COCOM style), it reads `[<DOC>][document][<MEM_1..l>]` alone, so that a
            document's vectors can be computed once and stored (`compress_documents(documents=...)`); no reranking.
        use_lora (`bool`, *optional*, defaults to `True`):
            Train the generator through LoRA adapters. With `False` the generator stays frozen.
        lora_config (`dict`, *optional*):
            The generator's adapters, as `peft.LoraConfig` arguments (`r`, `lora_alpha`, `lora_dropout`,
            `target_modules`, and any other `LoraConfig` field); missing keys take the defaults
            `{"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": "all-linear"}`. The shorthands
            `lora_r`, `lora_alpha`, `lora_dropout` and `lora_target_modules` (and folders saved with them) set the
            same keys.
        merge_adapters_for_inference (`bool`, *optional*, defaults to `True`):
            Generating in eval mode (after `from_pretrained`, or `model.eval()`) first folds the LoRA adapters into
            the generator's weights, so that generation runs at the base model's speed; `model.train()`,
            `state_dict()` (hence `save_pretrained`) and `load_state_dict()` take them out again, so checkpoints always
            hold the base weights and the adapters. Folding and unfolding round each touched weight once (at most one
            unit in the last place per cycle), as peft's `merge`/`unmerge` do.
        enable_reranking (`bool`, *optional*, defaults to `False`):
            Add a `<RR>` token to every compressor input and a dense head on its hidden state that scores relevance.
            Training policy (learning rates, loss weights) is not part of the model: see
            `ScaleDownTrainingArguments`. Folders saved by earlier versions that stored it still load.
        rerank_head_norm (`bool`, *optional*, defaults to `True`):
            The relevance head normalises the `<RR>` state (a LayerNorm) before its linear score
            ([`ScaleDownRerankHead`]). The compressor's states carry a few massive dimensions (norm ~110 at
            SmolLM2's layer 5): a bare linear readout of them (`False`, OSCAR's head) starts ~11 off the teacher's
            scores and its gradient dominates the clipped total. Folders saved before this option load with `False`.
        memory_token (`str`, *optional*, defaults to `"<MEM>"`):
            Placeholder of the generator prompt whose embeddings are overwritten by compressed vectors.
        compressor_memory_token_template (`str`, *optional*, defaults to `"<MEM_{}>"`):
            Template of the `num_memory_tokens` distinct memory tokens appended to each compressor input.
        rerank_token (`str`, *optional*, defaults to `"<RR>"`), document_separator_token (`str`, *optional*,
        defaults to `"<DOC>"`):
            Compressor-side special tokens: relevance slot, and separator between query and document.
        memory_token_id, compressor_memory_token_ids, rerank_token_id, document_separator_token_id:
            Ids of those tokens in their tokenizers; filled in by [`ScaleDownForCausalLM.from_generator`].
        system_prompt (`str`, *optional*):
            System message of the generator's chat prompt.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the projector and reranking head.
        memory_injection_layer (`int`, *optional*, defaults to 0):
            Generator layer at whose input the memory enters. `0` (OSCAR): the memory vectors replace the input
            embeddings of the `<MEM>` placeholders. `k > 0`: the placeholders enter as ordinary tokens and the memory
            vectors replace the hidden states at their positions as they enter decoder layer `k`, i.e. the memory is
            written into the residual stream it was computed in (natural with an `"n_layers"` compressor of `k`
            layers).
        memory_slots (`str`, *optional*, defaults to `"tokens"`):
            How the `num_memory_tokens` vectors of a document are read from the compressor. `"tokens"` (OSCAR): the
            hidden states at the appended `<MEM_1>..<MEM_l>` tokens. `"chunk_mean"`: the mean hidden state of each of
            `num_memory_tokens` consecutive, equal chunks of the document's tokens (the query still conditions them
            through attention); the compressor input keeps its `<MEM_i>` tokens. `"chunk_attention"`: the same chunks,
            each pooled with softmax weights from a learned score of every position (zero-initialised, so it starts
            as `"chunk_mean"`), so that a slot can learn to carry the tokens the query needs. `"span"`: the hidden
            states of the `num_memory_tokens` consecutive document tokens that a learned selector
            ([`ScaleDownSlotSelector`], reading the query and the document) finds most likely to hold the answer: the
            document's own states, kept as they were computed, where pooling would average the answer away. The
            selector learns from answer spans (`slot_selection_loss`); see the README, *Reading the memory*.
        span_windows (`int`, *optional*, defaults to 1):
            `"span"` only: the `num_memory_tokens` slots of a document are this many non-overlapping windows of
            `num_memory_tokens // span_windows` consecutive tokens, chosen greedily by their selector mass and kept in
            document order. 1: one window of `num_memory_tokens` tokens; `num_memory_tokens`: the single most
            answer-like tokens. More windows cover more candidate answers of a document (the selector's mass is
            spread over them) at the cost of their context.
        slot_selector_hidden_size (`int`, *optional*, defaults to 256), slot_selector_layers (`int`, *optional*,
        defaults to 1), slot_selector_heads (`int`, *optional*, defaults to 4):
            Width, depth and attention heads of the span selector's small bidirectional transformer (`"span"` only).
        span_lexical_weight (`float`, *optional*, defaults to 1.0):
            `"span"` only: the selector's scores become its log-probabilities plus this weight times a
            parameter-free prior, high near the document's informative tokens that also occur in the query and low on
            those tokens themselves ([`~modeling_scaledown.lexical_prior`]); the selector learns a correction to it.
            On the demo's held-out answer spans, a 4-epoch selector with the prior finds the answer's window in 0.46
            of the documents against 0.25 for a 16-epoch selector alone (README, *A lexical prior for the span
            selector*). `0` turns it off; folders saved before this option load with `0`.
        span_lexical_width (`float`, *optional*, defaults to 12.0):
            The prior's decay length, in tokens.
    """

    model_type = "scaledown"
    sub_configs = {"generator_config": AutoConfig, "compressor_config": AutoConfig}

    def __init__(
        self,
        generator_name_or_path: str = DEFAULT_GENERATOR,
        generator_config: PretrainedConfig | dict | None = None,
        compressor_type: str = "n_layers",
        num_compressor_layers: int = 8,
        compressor_name_or_path: str | None = None,
        compressor_config: PretrainedConfig | dict | None = None,
        compressor_keep_final_norm: bool = False,
        projection_hidden_dim: int | None = None,
        projector_hidden_act: str = "relu",
        doc_max_length: int | None = None,
        compression_rate: int | None = None,
        num_memory_tokens: int | None = None,
        query_max_length: int = 64,
        query_dependent: bool = True,
        use_lora: bool = True,
        lora_config: dict | None = None,
        merge_adapters_for_inference: bool = True,
        enable_reranking: bool = False,
        rerank_head_norm: bool = True,
        memory_token: str = "<MEM>",
        compressor_memory_token_template: str = "<MEM_{}>",
        rerank_token: str = "<RR>",
        document_separator_token: str = "<DOC>",
        memory_token_id: int | None = None,
        compressor_memory_token_ids: list[int] | None = None,
        rerank_token_id: int | None = None,
        document_separator_token_id: int | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        initializer_range: float = 0.02,
        memory_injection_layer: int = 0,
        memory_slots: str = "tokens",
        span_windows: int = 1,
        slot_selector_hidden_size: int = 256,
        slot_selector_layers: int = 1,
        slot_selector_heads: int = 4,
        span_lexical_weight: float = 1.0,
        span_lexical_width: float = 12.0,
        **kwargs,
    ):
        if compressor_type not in COMPRESSOR_TYPES:
            raise ValueError(f"`compressor_type` must be one of {COMPRESSOR_TYPES}, got {compressor_type!r}.")
        doc_max_length, compression_rate, num_memory_tokens = self._resolve_compression(
            doc_max_length, compression_rate, num_memory_tokens
        )
        lora_config = self._resolve_lora_config(lora_config, kwargs)
        for name, value in (
            ("num_compressor_layers", num_compressor_layers),
            ("query_max_length", query_max_length),
            ("slot_selector_hidden_size", slot_selector_hidden_size),
            ("slot_selector_layers", slot_selector_layers),
            ("slot_selector_heads", slot_selector_heads),
            ("span_windows", span_windows),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if projection_hidden_dim is not None and (
            not isinstance(projection_hidden_dim, int) or projection_hidden_dim < 1
        ):
            raise ValueError(
                f"`projection_hidden_dim` must be a positive integer or None, got {projection_hidden_dim!r}."
            )
        from transformers.activations import ACT2FN

        if projector_hidden_act not in ACT2FN:
            raise ValueError(
                f"`projector_hidden_act` must be one of transformers' activations ({', '.join(sorted(ACT2FN))}), "
                f"got {projector_hidden_act!r}."
            )
        if not query_dependent and enable_reranking:
            raise ValueError(
                "`enable_reranking` needs `query_dependent=True`: relevance is scored from the query read with the "
                "document, which an offline (query-independent) compressor never sees."
            )
        if not isinstance(rerank_head_norm, bool):
            raise ValueError(f"`rerank_head_norm` must be a bool, got {rerank_head_norm!r}.")
        if not isinstance(initializer_range, (int, float)) or initializer_range <= 0:
            raise ValueError(f"`initializer_range` must be a positive number, got {initializer_range!r}.")
        if "{}" not in compressor_memory_token_template:
            raise ValueError(
                "`compressor_memory_token_template` must contain '{}' (the memory slot number), got "
                f"{compressor_memory_token_template!r}."
            )
        if compressor_memory_token_ids is not None and len(compressor_memory_token_ids) != num_memory_tokens:
            raise ValueError(
                f"`compressor_memory_token_ids` must hold `num_memory_tokens`={num_memory_tokens} ids, got "
                f"{len(compressor_memory_token_ids)}."
            )
        reserved = [memory_token, rerank_token, document_separator_token]
        reserved += [compressor_memory_token_template.format(i + 1) for i in range(num_memory_tokens)]
        if len(set(reserved)) != len(reserved) or not all(isinstance(t, str) and t for t in reserved):
            raise ValueError(
                "The reserved tokens (`memory_token`, `rerank_token`, `document_separator_token` and the compressor "
                f"memory tokens) must be distinct, non-empty strings, got {reserved}."
            )
        if memory_slots not in MEMORY_SLOTS:
            raise ValueError(f"`memory_slots` must be one of {MEMORY_SLOTS}, got {memory_slots!r}.")
        if num_memory_tokens % span_windows:
            raise ValueError(
                f"`span_windows`={span_windows} must divide `num_memory_tokens`={num_memory_tokens} (equal windows)."
            )
        if slot_selector_hidden_size % slot_selector_heads:
            raise ValueError(
                f"`slot_selector_hidden_size`={slot_selector_hidden_size} must be a multiple of "
                f"`slot_selector_heads`={slot_selector_heads}."
            )
        for name, value, positive in (
            ("span_lexical_weight", span_lexical_weight, False),
            ("span_lexical_width", span_lexical_width, True),
        ):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or (positive and value == 0):
                raise ValueError(f"`{name}` must be a number {'>' if positive else '>='} 0, got {value!r}.")
        if not isinstance(memory_injection_layer, int) or isinstance(memory_injection_layer, bool):
            raise ValueError(f"`memory_injection_layer` must be an integer, got {memory_injection_layer!r}.")
        if memory_injection_layer < 0:
            raise ValueError(f"`memory_injection_layer` must be >= 0, got {memory_injection_layer}.")
        if compressor_type != "n_layers" and compressor_name_or_path is None:
            compressor_name_or_path = DEFAULT_ENCODER if compressor_type == "encoder" else DEFAULT_LLM_COMPRESSOR

        self.generator_name_or_path = generator_name_or_path
        self.generator_config = _to_config(generator_config, "generator_config")
        self.compressor_type = compressor_type
        self.num_compressor_layers = num_compressor_layers
        self.compressor_name_or_path = compressor_name_or_path
        self.compressor_config = _to_config(compressor_config, "compressor_config")
        self.compressor_keep_final_norm = compressor_keep_final_norm
        self.projection_hidden_dim = projection_hidden_dim
        self.projector_hidden_act = projector_hidden_act
        self.doc_max_length = doc_max_length
        self.compression_rate = compression_rate
        self.num_memory_tokens = num_memory_tokens
        self.query_max_length = query_max_length
        self.query_dependent = query_dependent
        self.use_lora = use_lora
        self.lora_config = lora_config
        self.merge_adapters_for_inference = merge_adapters_for_inference
        self.enable_reranking = enable_reranking
        self.rerank_head_norm = rerank_head_norm
        self.memory_token = memory_token
        self.compressor_memory_token_template = compressor_memory_token_template
        self.rerank_token = rerank_token
        self.document_separator_token = document_separator_token
        self.memory_token_id = memory_token_id
        self.compressor_memory_token_ids = list(compressor_memory_token_ids) if compressor_memory_token_ids else None
        self.rerank_token_id = rerank_token_id
        self.document_separator_token_id = document_separator_token_id
        self.system_prompt = system_prompt
        self.initializer_range = initializer_range
        self.memory_injection_layer = memory_injection_layer
        self.memory_slots = memory_slots
        self.span_windows = span_windows
        self.slot_selector_hidden_size = slot_selector_hidden_size
        self.slot_selector_layers = slot_selector_layers
        self.slot_selector_heads = slot_selector_heads
        self.span_lexical_weight = float(span_lexical_weight)
        self.span_lexical_width = float(span_lexical_width)
        if self.compressor_config is None and compressor_type == "n_layers" and self.generator_config is not None:
            self.compressor_config = self._first_layers_config()  # what the compressor is built from
        layers = getattr(self.generator_config, "num_hidden_layers", None)
        if layers is not None and memory_injection_layer >= layers:
            raise ValueError(
                f"`memory_injection_layer`={memory_injection_layer} must be below the generator's {layers} layers."
            )
        for name in _TRAINING_POLICY:  # stored by earlier versions; training arguments own them now
            kwargs.pop(name, None)
        # The generator ties its own embeddings (see its config); the wrapper itself never ties anything.
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)

    @staticmethod
    def _resolve_lora_config(lora_config: dict | None, kwargs: dict) -> dict:
        """`lora_config` completed with the defaults and the `lora_*` shorthands (popped from `kwargs`), checked:
        a plain, JSON-able dict of `peft.LoraConfig` arguments."""
        if lora_config is not None and not isinstance(lora_config, dict):
            to_dict = getattr(lora_config, "to_dict", None)  # a peft.LoraConfig
            if to_dict is None:
                raise ValueError(f"`lora_config` must be a dict of `peft.LoraConfig` arguments, got {lora_config!r}.")
            lora_config = {k: v for k, v in to_dict().items() if k in LORA_SHORTHANDS.values()}
        resolved = {**DEFAULT_LORA_CONFIG, **(lora_config or {})}
        for shorthand, key in LORA_SHORTHANDS.items():
            if shorthand in kwargs:
                resolved[key] = kwargs.pop(shorthand)
        if isinstance(resolved["target_modules"], (tuple, set)):
            resolved["target_modules"] = sorted(resolved["target_modules"])
        r, alpha, dropout = resolved["r"], resolved["lora_alpha"], resolved["lora_dropout"]
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"`lora_config['r']` (`lora_r`) must be a positive integer, got {r!r}.")
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"`lora_config['lora_alpha']` (`lora_alpha`) must be a positive number, got {alpha!r}.")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`lora_config['lora_dropout']` (`lora_dropout`) must be in [0, 1), got {dropout!r}.")
        if not isinstance(resolved["target_modules"], (str, list)):
            raise ValueError(
                "`lora_config['target_modules']` must be 'all-linear', a module name or a list of names, got "
                f"{resolved['target_modules']!r}."
            )
        return resolved

    @staticmethod
    def _resolve_compression(doc_max_length, compression_rate, num_memory_tokens) -> tuple[int, int, int]:
        for name, value in (
            ("doc_max_length", doc_max_length),
            ("compression_rate", compression_rate),
            ("num_memory_tokens", num_memory_tokens),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        # Fill up to two missing values from the paper's defaults (128 tokens -> 8 embeddings, rate 16).
        if doc_max_length is None and compression_rate is None and num_memory_tokens is None:
            doc_max_length = 128
        if (doc_max_length is None) + (compression_rate is None) + (num_memory_tokens is None) == 2:
            if compression_rate is None:
                compression_rate = 16
            else:
                doc_max_length = 128
        if doc_max_length is None:
            doc_max_length = compression_rate * num_memory_tokens
        elif num_memory_tokens is None:
            if doc_max_length % compression_rate:
                raise ValueError(
                    f"`doc_max_length`={doc_max_length} is not a multiple of `compression_rate`={compression_rate}."
                )
            num_memory_tokens = doc_max_length // compression_rate
        elif compression_rate is None:
            if doc_max_length % num_memory_tokens:
                raise ValueError(
                    f"`doc_max_length`={doc_max_length} is not a multiple of `num_memory_tokens`={num_memory_tokens}."
                )
            compression_rate = doc_max_length // num_memory_tokens
        if doc_max_length != compression_rate * num_memory_tokens:
            raise ValueError(
                "Inconsistent compression settings: `doc_max_length` must equal `compression_rate` x "
                f"`num_memory_tokens`, got {doc_max_length} != {compression_rate} x {num_memory_tokens}."
            )
        return doc_max_length, compression_rate, num_memory_tokens

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """As in `PretrainedConfig`, with errors that say what is wrong: a local path that does not exist, a folder
        without `config.json`, or the folder of another model type (e.g. a plain generator) given where a ScaleDown
        model is expected."""
        source = os.fspath(pretrained_model_name_or_path) if isinstance(pretrained_model_name_or_path, os.PathLike) \
            else pretrained_model_name_or_path  # fmt: skip
        if isinstance(source, str) and not source.endswith(".json"):
            _check_model_source(source, kwargs.get("subfolder") or "")
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{source} holds a `{model_type}` model, not a ScaleDown model. To compress documents for this "
                f"generator, wrap it: `ScaleDownForCausalLM.from_generator({source!r}, num_compressor_layers=...)`, "
                f"or `scaledown train --generator {source}` (then load the folder that training saves)."
            )
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "ScaleDownConfig":
        """As `PretrainedConfig.from_dict`; a saved configuration (it names its `model_type`) written before
        `rerank_head_norm` existed keeps the bare linear relevance head its weights were trained with, and one written
        before `span_lexical_weight` its span selector without the lexical prior."""
        if "model_type" in config_dict:
            for name, earlier in (("rerank_head_norm", False), ("span_lexical_weight", 0.0)):
                if name not in config_dict and name not in kwargs:
                    config_dict = {**config_dict, name: earlier}
        return super().from_dict(config_dict, **kwargs)

    def get_generator_config(self) -> PretrainedConfig:
        """The generator's configuration (the sub-configuration itself: the model's generator shares it)."""
        if self.generator_config is None:
            raise ValueError(
                "This ScaleDownConfig holds no `generator_config`: build the model with "
                "`ScaleDownForCausalLM.from_generator(...)` or "
                "pass `generator_config=AutoConfig.from_pretrained(...)`."
            )
        return self.generator_config

    def get_text_config(self, decoder=None, encoder=None, **kwargs) -> PretrainedConfig:
        """The configuration of the text the model writes: the generator's (this configuration itself while it has
        none)."""
        return self.generator_config if self.generator_config is not None else self

    def to_dict(self) -> dict[str, Any]:
        """Serialise, with the sub-configurations in full (each with its `model_type`); an absent one is left out."""
        output = super().to_dict()
        for name in _SUB_CONFIGS:
            value = getattr(self, name, None)
            if value is None:
                output.pop(name, None)
            else:
                output[name] = _config_dict(value)
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """As `PretrainedConfig.to_diff_dict`, with the sub-configurations in full: they are rebuilt from their own
        `model_type` on load, and a default ScaleDownConfig has none to compare with."""
        held = {name: self.__dict__.get(name) for name in _SUB_CONFIGS}
        try:
            for name in _SUB_CONFIGS:
                self.__dict__[name] = None
            output = super().to_diff_dict()
        finally:
            self.__dict__.update(held)
        for name, value in held.items():
            if value is not None:
                output[name] = _config_dict(value)
        # always written: their absence means an earlier version
        output["rerank_head_norm"] = self.rerank_head_norm
        output["span_lexical_weight"] = self.span_lexical_weight
        return output

    def get_compressor_config(self) -> PretrainedConfig:
        """The compressor backbone's configuration (the sub-configuration itself): for `"encoder"`/`"llm"` the
        compressor's own, for `"n_layers"` the generator's cut to `num_compressor_layers` layers."""
        if self.compressor_config is not None:
            return self.compressor_config
        if self.compressor_type != "n_layers":
            raise ValueError(
                f"A {self.compressor_type!r} compressor needs `compressor_config`: build the model with "
                "`ScaleDownForCausalLM.from_generator(..., compressor_name_or_path=...)`."
            )
        self.compressor_config = self._first_layers_config()
        return self.compressor_config

    def _first_layers_config(self) -> PretrainedConfig:
        """The generator's configuration cut to `num_compressor_layers` layers (an N-layers compressor)."""
        config = copy.deepcopy(self.get_generator_config())
        total = config.num_hidden_layers
        if self.num_compressor_layers > total:
            raise ValueError(
                f"`num_compressor_layers`={self.num_compressor_layers} exceeds the generator's {total} layers."
            )
        config.num_hidden_layers = self.num_compressor_layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[: self.num_compressor_layers]
        config.use_cache = False
        return config


__all__ = ["ScaleDownConfig"]


def _check_model_source(source: str, subfolder: str = "") -> None:
    """Raise a clear `OSError` when `source` names a local folder that does not exist or holds no `config.json`. A
    string that is not an existing folder is taken for a hub id only when it looks like one (`name` or
    `namespace/name`); an absolute, home- or dot-relative path, or one with more than one separator, is a local
    path."""
    folder = os.path.join(source, subfolder) if subfolder else source
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise OSError(
                f"{folder} has no config.json: it is not a saved model folder. Save a ScaleDown model there with "
                "`model.save_pretrained(folder)` (or train one with `scaledown train`), or wrap a generator with "
                "`ScaleDownForCausalLM.from_generator(...)`."
            )
        return
    looks_local = os.path.isabs(source) or source.startswith(("~", ".")) or source.count("/") > 1
    looks_local = looks_local or (os.sep != "/" and os.sep in source)
    if looks_local or os.path.exists(source):
        raise OSError(
            f"{source}: no such folder. Give the folder of a saved ScaleDown model, or a hub id such as "
            "`org/scaledown-mistral-8l`."
        )
