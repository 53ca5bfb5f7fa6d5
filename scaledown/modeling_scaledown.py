# Copyright 2026 The ScaleDown Authors. Licensed under the Apache License, Version 2.0.
"""ScaleDown: OSCAR online soft compression and reranking (Louis et al., 2025, arXiv:2504.07109) for fast RAG.

This file is only the model: compressor, projector, memory slots and injection, forward and generation. It is copied
next to every saved checkpoint as Hub remote code, with the files it imports: `configuration_scaledown.py`,
`processing_scaledown.py` (the text side: tokenisation, prompts, compressor rows, input checks, the processor),
`adapters_scaledown.py` (the generator's LoRA adapters, through peft) and `saving_scaledown.py` (atomic folders, the
adapter-only export, upload). Nothing else but torch, transformers and, guarded, peft.
"""

import contextlib
import copy
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .adapters_scaledown import ScaleDownAdapterMixin, model_lock, serialised
from .configuration_scaledown import ScaleDownConfig
from .processing_scaledown import (
    COMPRESSOR_TOKENIZER_FOLDER,
    TOKENIZER_HUB_KWARGS,
    ScaleDownProcessor,
    build_compressor_inputs,
    build_generator_inputs,
    build_generator_prompt,
    check_positive,
    compressor_parts,
    compressor_rows,
    load_tokenizer,
    max_compressor_length,
    memory_segments,
    pad_compressor_rows,
    prepare_tokenizers,
    raw_document_segments,
    validate_rag_inputs,
)
from .saving_scaledown import LEGACY_KEY_MAPPING, ScaleDownSavingMixin, checkpoint_weight_names, grow_vocabulary


try:  # transformers >= 5: init functions that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    from torch.nn import init


logger = logging.get_logger(__name__)


@dataclass
class ScaleDownCompressorOutput(ModelOutput):
    """
    Output of [`ScaleDownForCausalLM.compress`].

    Args:
        memory_embeddings (`torch.FloatTensor` of shape `(num_pairs, num_memory_tokens, generator_hidden_size)`):
            Compressed representation of every (query, document) pair, in the generator's embedding space.
        rerank_scores (`torch.FloatTensor` of shape `(num_pairs,)`, *optional*):
            Relevance score of every pair, when `config.enable_reranking`.
        slot_scores (`torch.FloatTensor` of shape `(num_pairs, compressor_length)`, *optional*):
            With `config.memory_slots="span"`: the span selector's score of every document token (`-inf` elsewhere),
            what [`~scaledown.training.losses.slot_selection_loss`] trains.
    """

    memory_embeddings: torch.FloatTensor | None = None
    rerank_scores: torch.FloatTensor | None = None
    slot_scores: torch.FloatTensor | None = None


@dataclass
class ScaleDownCausalLMOutput(ModelOutput):
    """
    Output of [`ScaleDownForCausalLM.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Next-token cross-entropy of the generator on the unmasked label tokens.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Generator logits.
        rerank_scores (`torch.FloatTensor` of shape `(num_pairs,)`, *optional*):
            Relevance score of every (query, document) pair, when `config.enable_reranking`.
        memory_embeddings (`torch.FloatTensor` of shape `(num_pairs, num_memory_tokens, generator_hidden_size)`):
            The compressed documents written into the `<MEM>` slots of the prompts.
        slot_scores (`torch.FloatTensor` of shape `(num_pairs, compressor_length)`, *optional*):
            The span selector's document-token scores (`config.memory_slots="span"`; see
            [`ScaleDownCompressorOutput`]).
        hidden_states, attentions:
            As returned by the generator (with `output_hidden_states` / `output_attentions`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    rerank_scores: torch.FloatTensor | None = None
    memory_embeddings: torch.FloatTensor | None = None
    slot_scores: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class CompressedDocuments(list):
    """A list with, per question, a tensor `(n_docs, num_memory_tokens, generator_hidden_size)`.

    `rerank_scores` holds, per question, a tensor `(n_docs,)` of relevance scores when reranking is enabled, else
    `None`. Pass the object (or any list of such tensors) to [`ScaleDownForCausalLM.generate_from_compressed`].
    """

    def __init__(self, memory_embeddings: Sequence[torch.Tensor], rerank_scores: Sequence[torch.Tensor] | None = None):
        super().__init__(memory_embeddings)
        self.rerank_scores = None if rerank_scores is None else list(rerank_scores)


def has_native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA card that supports it, or a CPU with AVX512-BF16 / AMX
    (elsewhere bfloat16 matmuls are emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # private torch.cpu probes: absent ones count as unsupported
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def fast_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """What `dtype="auto"` means for a ScaleDown model: bfloat16 where `device` computes in it natively, float16 on a
    CUDA card without bfloat16, else float32."""
    if has_native_bfloat16(device):
        return torch.bfloat16
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def device_of_map(device_map) -> torch.device:
    """The device that most of a model lands on under `from_pretrained`'s `device_map` (`None`: the CPU; `"auto"`: the
    first CUDA card when there is one)."""
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, dict):
        devices = [d for d in device_map.values() if d not in ("cpu", "disk")]
        device_map = devices[0] if devices else "cpu"
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


def resolve_auto_dtype(kwargs: dict) -> dict:
    """`from_pretrained`-style `kwargs` with `dtype="auto"` (or `torch_dtype="auto"`) replaced by the [`fast_dtype`]
    of the device that `device_map` points to; anything else is returned unchanged."""
    if kwargs.get("dtype", kwargs.get("torch_dtype")) != "auto":
        return kwargs
    kwargs = {k: v for k, v in kwargs.items() if k != "torch_dtype"}
    kwargs["dtype"] = fast_dtype(device_of_map(kwargs.get("device_map")))
    return kwargs


def _can_check(tensor: torch.Tensor) -> bool:
    """Whether input checks that read values back to the host are cheap here: not on XLA devices (TPU, Trainium),
    where such a read would cut the lazily traced graph at every step."""
    return tensor.device.type != "xla"


def _isin(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """`torch.isin` by broadcasting (torch-xla runs `isin` on the CPU, outside the graph)."""
    return (values.unsqueeze(-1) == candidates).any(dim=-1)


def _gather_positions(hidden: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """`hidden[mask].view(rows, count, -1)` for a `mask` with exactly `count` true values per row, kept in order,
    computed with static shapes: a stable sort puts the true positions first, then a gather."""
    positions = torch.sort((~mask).to(torch.int32), dim=1, stable=True).indices[:, :count]
    return torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def _document_mask(input_ids: torch.LongTensor, is_memory: torch.Tensor, separator_id: int) -> torch.Tensor:
    """`(rows, length)` bool: the document tokens of every compressor row, those after its `separator_id` token (or
    from the start, for rows without one: document suffixes read after a cached query prefix) and before its first
    memory token (so never padding, which follows the memory tokens)."""
    is_separator = input_ids == separator_id
    seen_separator = is_separator.long().cumsum(1) > 0
    after_separator = torch.where(is_separator.any(1, keepdim=True), seen_separator & ~is_separator, True)
    return after_separator & (is_memory.long().cumsum(1) == 0)


def _span_positions(
    scores: torch.Tensor, is_document: torch.Tensor, count: int, windows: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` document tokens of every row, as `windows` non-overlapping runs of `count // windows` consecutive
    tokens, chosen greedily by their total softmax probability under `scores` `(rows, length)` (softmax over the row's
    document tokens), in document order: `(positions, inside)`, both `(rows, count)`, `inside` false where a
    position lies past the document or a window found no room (a document shorter than a window gives all of its
    tokens as its first window). Static shapes (cumulative sums, `windows` argmaxes and a sort), so that XLA compiles
    it once."""
    length = scores.shape[1]
    size = count // windows
    probabilities = torch.softmax(scores.float().masked_fill(~is_document, float("-inf")), dim=-1)
    totals = nn.functional.pad(torch.nan_to_num(probabilities).cumsum(1), (1, 0))  # (rows, length + 1)
    starts = torch.arange(length, device=scores.device)
    mass = totals[:, (starts + size).clamp(max=length)] - totals[:, starts]
    index = is_document.long().cumsum(1) - 1  # position within the document
    valid = is_document & ((index + size <= is_document.sum(1, keepdim=True)) | (index == 0))
    mass = mass.masked_fill(~valid, -1.0)
    chosen, found = [], []
    for _ in range(windows):
        start = mass.argmax(dim=1, keepdim=True)  # the first of equal windows
        best = torch.gather(mass, 1, start)
        chosen.append(start)
        found.append(best >= 0)
        mass = mass.masked_fill((starts.view(1, -1) - start).abs() < size, -1.0)  # no overlap with this window
    chosen, found = torch.cat(chosen, 1), torch.cat(found, 1)
    chosen, order = torch.sort(torch.where(found, chosen, length), dim=1)  # windows that found no room go last
    found = torch.gather(found, 1, order)
    positions = (chosen.unsqueeze(-1) + torch.arange(size, device=scores.device)).reshape(-1, count)
    found = found.repeat_interleave(size, dim=1)
    inside = torch.gather(is_document, 1, positions.clamp(max=length - 1)) & (positions < length) & found
    return positions.clamp(max=length - 1), inside


def _chunk_means(
    hidden: torch.Tensor,
    input_ids: torch.LongTensor,
    is_memory: torch.Tensor,
    separator_id: int,
    count: int,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean hidden state of each of `count` consecutive, equal chunks of every row's document tokens: `(rows, count,
    width)`. The document tokens of a row are those after its `separator_id` token (or from the start, for rows
    without one: document suffixes read after a cached query prefix) and before its first memory token (so never
    padding, which follows the memory tokens). Token `t` of an `n`-token document goes to chunk `t * count // n`:
    every chunk holds `n / count` tokens (at least one when `n >= count`; a chunk without tokens gives zeros). With
    `scores` `(rows, length)`, each chunk is a softmax-weighted mean instead (equal scores: the plain mean). Static
    shapes (cumulative sums, a masked softmax and a batched matmul), so that XLA compiles it once."""
    is_document = _document_mask(input_ids, is_memory, separator_id)
    length = is_document.sum(1, keepdim=True)
    index = is_document.long().cumsum(1) - 1
    chunk = torch.div(index * count, length.clamp(min=1), rounding_mode="floor")
    member = (chunk.unsqueeze(1) == torch.arange(count, device=chunk.device).view(1, -1, 1)) & is_document.unsqueeze(1)
    if scores is None:
        weights = member.to(hidden.dtype)
    else:
        logits = scores.float().unsqueeze(1).masked_fill(~member, float("-inf"))
        weights = torch.exp(logits - logits.amax(-1, keepdim=True).clamp(min=-1e4)).to(hidden.dtype)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-6)
    return torch.bmm(weights, hidden)


def _scatter_memory(hidden: torch.Tensor, placeholder: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """`hidden` `(batch, length, width)` with its `placeholder` positions `(batch, length)` overwritten, in row-major
    reading order, by the rows of `memory` `(num_placeholders, width)`: a gather and a `where` (static shapes)."""
    order = (placeholder.reshape(-1).long().cumsum(0) - 1).clamp(min=0).reshape(placeholder.shape)
    return torch.where(placeholder.unsqueeze(-1), memory.to(hidden.device, hidden.dtype)[order], hidden)


def _make_contiguous(module, args):
    return (args[0].contiguous(), *args[1:]) if args and torch.is_tensor(args[0]) else None


@contextlib.contextmanager
def _contiguous_head_input(model: PreTrainedModel):
    """Hand `model`'s LM head contiguous inputs during the block.

    `generate` feeds the head `hidden_states[:, -1:, :]` after the prefill: a strided view. On CPU, torch multiplies a
    strided bfloat16/float16 batch by copying the weight once per row (pytorch/pytorch#151934): at batch 16 with
    SmolLM2's 49k-token vocabulary that is 865 MiB and ~1 s, against ~0 MiB and 6 ms for the contiguous copy of the
    `(batch, 1, hidden)` slice (float32 also runs 4x slower strided). The copy is cheap on every device.
    """
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(_make_contiguous) if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _hidden_size(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return config.hidden_size


class ScaleDownProjector(nn.Module):
    """Maps the compressor's hidden states to the generator's width (`"encoder"`/`"llm"` compressors; OSCAR's 2-layer
    MLP): `linear_2(act(linear_1(x)))`, as LLaVA's multimodal projector.

    Args:
        in_features (`int`): the compressor's hidden size.
        hidden_features (`int`): width of the hidden layer (`config.projection_hidden_dim`, default: the generator's
            hidden size).
        out_features (`int`): the generator's hidden size.
        hidden_act (`str`): activation (`config.projector_hidden_act`, a `transformers.activations` name).
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, hidden_act: str = "relu"):
        super().__init__()
        from transformers.activations import ACT2FN

        self.linear_1 = nn.Linear(in_features, hidden_features)
        self.act = ACT2FN[hidden_act]
        self.linear_2 = nn.Linear(hidden_features, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., in_features)` -> `(..., out_features)`."""
        return self.linear_2(self.act(self.linear_1(hidden_states)))


class ScaleDownSlotScorer(nn.Linear):
    """Score of every compressor position for `memory_slots="chunk_attention"`: each memory slot is the
    softmax(score)-weighted mean of its document chunk. Zero-initialised, so training starts from the plain means."""


class ScaleDownRerankHead(nn.Module):
    """Relevance score of a (query, document) pair from the compressor's hidden state at its `<RR>` token: a
    LayerNorm, then a linear score (`config.rerank_head_norm`). The compressor's states carry a few massive dimensions
    (norm ~110 at SmolLM2's layer 5): read bare, the score starts ~11 off the teacher's and its gradient is ~7 times
    that of this head, most of the clipped total (README, *The relevance head*)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.score = nn.Linear(in_features, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., in_features)` -> `(..., 1)`."""
        return self.score(self.norm(hidden_states))


class ScaleDownSelectorLayer(nn.Module):
    """One pre-norm bidirectional transformer layer of [`ScaleDownSlotSelector`] (SDPA attention, GELU MLP of twice
    the width, dropout 0.1 on both residual branches)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.1):
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 2 * hidden_size), nn.GELU(), nn.Linear(2 * hidden_size, hidden_size)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`hidden_states` `(rows, length, hidden_size)`; `attention_mask` `(rows, length)` bool, the readable
        positions."""
        rows, length, width = hidden_states.shape
        qkv = self.qkv_proj(self.attention_norm(hidden_states)).view(rows, length, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = attention_mask[:, None, None, :]
        attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(rows, length, width)
        hidden_states = hidden_states + self.dropout(self.o_proj(attended))
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


class ScaleDownSlotSelector(nn.Module):
    """Scores every compressor position for `memory_slots="span"`: a small bidirectional transformer over the
    compressor's output states of `[start][query][<DOC>][document]` (so that each document token is scored against
    the whole query), then a linear score. The memory of a document is the compressor's own states at the
    `num_memory_tokens` consecutive document tokens whose softmax scores sum highest: a hard choice, learned from
    answer spans ([`~scaledown.training.losses.slot_selection_loss`]), not from the generator's loss.

    Args:
        in_features (`int`): the compressor's hidden size.
        hidden_size (`int`): the selector's width (`config.slot_selector_hidden_size`).
        num_layers (`int`): transformer layers (`config.slot_selector_layers`).
        num_heads (`int`): attention heads (`config.slot_selector_heads`).
    """

    def __init__(self, in_features: int, hidden_size: int, num_layers: int, num_heads: int):
        super().__init__()
        self.input_norm = nn.LayerNorm(in_features)  # the compressor's states carry a few massive dimensions
        self.input_proj = nn.Linear(in_features, hidden_size)
        self.layers = nn.ModuleList(ScaleDownSelectorLayer(hidden_size, num_heads) for _ in range(num_layers))
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`hidden_states` `(rows, length, in_features)`, `attention_mask` `(rows, length)` bool -> scores
        `(rows, length)` (float32)."""
        hidden_states = self.input_proj(self.input_norm(hidden_states))
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return self.score(hidden_states).squeeze(-1).float()


def lexical_prior(
    input_ids: torch.LongTensor,
    is_document: torch.Tensor,
    is_query: torch.Tensor,
    informative: torch.Tensor,
    width: float,
    penalty: float = 4.0,
) -> torch.Tensor:
    """A parameter-free prior on where a document's answer lies (the span selector's, `span_lexical_weight`): for
    every document token, the sum over the document's informative tokens that also occur in the query of
    `exp(-distance / width)`, minus `penalty` where the token itself occurs in the query (an answer seldom repeats the
    question's words). `-inf` outside the document. Static shapes: one `(rows, length, length)` comparison.

    Args:
        input_ids (`torch.LongTensor` of shape `(rows, length)`): compressor ids.
        is_document (`torch.Tensor` of shape `(rows, length)`, bool): the document tokens.
        is_query (`torch.Tensor` of shape `(rows, length)`, bool): the query tokens.
        informative (`torch.Tensor` of shape `(vocab_size,)`, bool): the ids that count (see
            [`ScaleDownLexicalPrior.set_vocabulary`]).
        width (`float`): the decay length, in tokens.
        penalty (`float`): subtracted at document tokens that occur in the query.
    """
    matches = (input_ids.unsqueeze(-1) == input_ids.unsqueeze(1)) & is_query.unsqueeze(1)  # (rows, doc pos, any pos)
    in_query = matches.any(-1) & is_document & informative.to(input_ids.device)[input_ids]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.float)
    decay = torch.exp(-(positions.view(-1, 1) - positions.view(1, -1)).abs() / width)  # (length, length)
    score = in_query.float() @ decay - penalty * in_query.float()  # decay is symmetric
    return score.masked_fill(~is_document, float("-inf"))


class ScaleDownLexicalPrior(nn.Module):
    """Holds which compressor token ids are informative for [`lexical_prior`] (a buffer saved with the weights: the
    decoded token has at least 4 letters or digits, so that "the" or "of" never count) and its decay length.

    Args:
        vocab_size (`int`): the compressor's vocabulary size.
        width (`float`): `config.span_lexical_width`.
    """

    def __init__(self, vocab_size: int, width: float):
        super().__init__()
        self.width = width
        self.register_buffer("informative", torch.ones(vocab_size, dtype=torch.bool))

    @torch.no_grad()
    def set_vocabulary(self, tokenizer) -> None:
        """Mark the informative ids of `tokenizer` (the compressor's); special and added tokens never are."""
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        flags = [
            index not in special and sum(c.isalnum() for c in tokenizer.decode([index])) >= 4
            for index in range(self.informative.shape[0])
        ]
        self.informative.copy_(torch.tensor(flags, dtype=torch.bool))

    def forward(self, input_ids: torch.LongTensor, is_document: torch.Tensor, is_query: torch.Tensor) -> torch.Tensor:
        """`(rows, length)` prior scores (see [`lexical_prior`])."""
        return lexical_prior(input_ids, is_document, is_query, self.informative, self.width)


class ScaleDownPreTrainedModel(PreTrainedModel):
    config_class = ScaleDownConfig
    base_model_prefix = "scaledown"
    supports_gradient_checkpointing = True
    _no_split_modules = []  # the generator's and compressor's own are gathered from them
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        """Initialise the projector, reranking head and slot scorer; generator and compressor initialise
        themselves."""
        if isinstance(module, ScaleDownSlotScorer):  # equal scores: chunk_attention starts as chunk_mean
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class ScaleDownForCausalLM(ScaleDownSavingMixin, ScaleDownAdapterMixin, ScaleDownPreTrainedModel, GenerationMixin):
    r"""
    OSCAR-style retrieval-augmented generator with online, query-dependent soft compression of the documents.

    For every (query, document) pair the `compressor` reads `[query][<DOC>][document][<MEM_1>..<MEM_l>]([<RR>])`
    and emits its hidden states at the memory positions (through `projector` for `"encoder"`/`"llm"`
    compressors); `rerank_head` scores the `<RR>` state. The `generator` (a causal LM with LoRA adapters) reads a chat
    prompt in which the embeddings of `<MEM>` placeholders are overwritten by those vectors, plus the question in clear
    text. Questions in a batch may have different numbers of documents, zero included (the answer then comes from the
    question alone).

    Build one with [`~ScaleDownForCausalLM.from_generator`], reload it with `from_pretrained` (or
    `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` without installing this package).
    """

    _auto_class = "AutoModelForCausalLM"

    def __init__(self, config: ScaleDownConfig, generator: PreTrainedModel | None = None, compressor=None):
        super().__init__(config)
        dtype = torch.get_default_dtype()
        if generator is None:
            generator = AutoModelForCausalLM.from_config(config.get_generator_config(), dtype=dtype)
        self.generator = generator
        config.generator_config = generator.config  # one object: resizing, dtype and attention stay in step
        if config.use_lora:
            self._inject_lora()

        compressor_config = config.get_compressor_config()
        if compressor is None:
            compressor = AutoModel.from_config(compressor_config, dtype=dtype)
        if getattr(compressor, "pooler", None) is not None:  # BERT-style pooler: unused, would break DDP
            compressor.pooler = None
        if config.compressor_type == "n_layers" and not config.compressor_keep_final_norm:
            compressor.norm = nn.Identity()
        self.compressor = compressor
        config.compressor_config = compressor.config

        compressor_width = _hidden_size(compressor_config)
        generator_width = _hidden_size(self.generator.config)
        if config.compressor_type == "n_layers":
            self.projector = None
        else:
            self.projector = ScaleDownProjector(
                compressor_width,
                config.projection_hidden_dim or generator_width,
                generator_width,
                config.projector_hidden_act,
            )
        self.rerank_head = None
        if config.enable_reranking:  # a bare linear score in folders saved before `rerank_head_norm` (OSCAR's)
            rerank_norm = getattr(config, "rerank_head_norm", False)
            self.rerank_head = ScaleDownRerankHead(compressor_width) if rerank_norm else nn.Linear(compressor_width, 1)
        self.slot_scorer = (
            ScaleDownSlotScorer(compressor_width, 1) if config.memory_slots == "chunk_attention" else None
        )
        self.slot_selector = (
            ScaleDownSlotSelector(
                compressor_width, config.slot_selector_hidden_size, config.slot_selector_layers,
                config.slot_selector_heads,
            )
            if config.memory_slots == "span"
            else None
        )  # fmt: skip
        self.lexical_prior = None
        if config.memory_slots == "span" and config.span_lexical_weight > 0:
            vocab_size = compressor.get_input_embeddings().weight.shape[0]
            self.lexical_prior = ScaleDownLexicalPrior(vocab_size, config.span_lexical_width)
        # The heads read the compressor's states: same dtype (a generator and compressor loaded in bfloat16 by
        # `from_generator` while the default dtype is float32 must not leave them in float32).
        compressor_dtype = next(compressor.parameters()).dtype
        for module in (self.projector, self.rerank_head, self.slot_scorer, self.slot_selector):
            if module is not None:
                module.to(dtype=compressor_dtype)

        if config.memory_injection_layer and config.memory_injection_layer >= len(self._generator_layers()):
            raise ValueError(
                f"`memory_injection_layer`={config.memory_injection_layer} must be below the generator's "
                f"{len(self._generator_layers())} layers."
            )
        self.tokenizer = None
        self.compressor_tokenizer = None
        self._adapters_disabled = False  # inside `generator_adapters_disabled`
        self.post_init()
        self._set_trainable()

    def get_input_embeddings(self):
        return self.generator.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.generator.set_input_embeddings(value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the generator's vocabulary (e.g. after `model.tokenizer.add_tokens(...)`) and keep the model whole:
        the stored generator configuration follows (so the folder reloads), and an `"n_layers"` compressor, which
        reads the same tokenizer, gets the same new rows. Encoder and LLM compressors have their own tokenizer and are
        left as they are. The reserved tokens must stay inside the vocabulary."""
        reserved = [self.config.memory_token_id, self.config.document_separator_token_id, self.config.rerank_token_id]
        if self.config.compressor_type == "n_layers":
            reserved += list(self.config.compressor_memory_token_ids or [])
        needed = max((t for t in reserved if t is not None), default=-1) + 1
        embeddings = self.generator.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.weight.shape[0]
        if size < needed:
            raise ValueError(f"A vocabulary of {size} tokens would drop ScaleDown's reserved tokens (ids up to "
                             f"{needed - 1}); resize to at least {needed}.")  # fmt: skip
        self.config.generator_config.vocab_size = size
        if self.config.compressor_type == "n_layers":
            compressor_embeddings = self.compressor.get_input_embeddings()
            old = compressor_embeddings.weight.shape[0]
            self.compressor.resize_token_embeddings(size, mean_resizing=False)
            if size > old:  # new rows start as the generator's, as the whole compressor did
                with torch.no_grad():
                    self.compressor.get_input_embeddings().weight[old:] = embeddings.weight[old:size].to(
                        self.compressor.get_input_embeddings().weight.device
                    )
        self._setup_generation_config()
        return embeddings

    @classmethod
    def from_generator(
        cls,
        generator: str | os.PathLike | PreTrainedModel,
        tokenizer=None,
        *,
        compressor: str | os.PathLike | PreTrainedModel | None = None,
        compressor_tokenizer=None,
        generator_kwargs: dict | None = None,
        compressor_kwargs: dict | None = None,
        **config_kwargs,
    ) -> "ScaleDownForCausalLM":
        r"""
        Build a ScaleDown model around a causal LM generator.

        Args:
            generator (`str`, `os.PathLike` or `PreTrainedModel`):
                Hub id, local folder or already loaded causal LM. A loaded model is used in place: its vocabulary is
                extended with the memory token and LoRA adapters are injected into it.
            tokenizer (*optional*):
                The generator's tokenizer; loaded from `generator` when omitted. It is copied, never modified.
            compressor (`str`, `os.PathLike` or `PreTrainedModel`, *optional*):
                For `compressor_type="encoder"`/`"llm"`: hub id, folder or loaded `AutoModel`. Defaults to
                `config.compressor_name_or_path` (ModernBERT-base for encoders).
            compressor_tokenizer (*optional*):
                The compressor's tokenizer (`"encoder"`/`"llm"`); loaded from `compressor` when omitted.
            generator_kwargs, compressor_kwargs (`dict`, *optional*):
                Extra `from_pretrained` arguments (`dtype`, `device_map`, `revision`, ...) when loading by name.
                `dtype="auto"` is the device's fast dtype ([`fast_dtype`]): bfloat16 where the device
                computes in it natively (recent CPUs with AVX512-BF16/AMX, most CUDA cards), else float32 on a CPU.
            config_kwargs:
                Any [`ScaleDownConfig`] argument (`compressor_type`, `num_compressor_layers`, `enable_reranking`, ...).
        """
        generator_kwargs = resolve_auto_dtype(dict(generator_kwargs or {}))
        compressor_kwargs = resolve_auto_dtype(dict(compressor_kwargs or {}))
        if isinstance(generator, (str, os.PathLike)):
            name_or_path = str(generator)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path)
            generator = AutoModelForCausalLM.from_pretrained(name_or_path, **generator_kwargs)
        elif isinstance(generator, PreTrainedModel):
            name_or_path = getattr(generator, "name_or_path", None) or generator.config._name_or_path
            if tokenizer is None:
                if not name_or_path:
                    raise ValueError("`tokenizer` is required when `generator` is a model without a `name_or_path`.")
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        else:
            raise ValueError(f"`generator` must be a hub id, a folder or a PreTrainedModel, got {type(generator)}.")
        if not getattr(generator, "can_generate", lambda: True)():
            raise ValueError(f"`generator` must be a causal LM, got {type(generator).__name__}.")
        config_kwargs.setdefault("generator_name_or_path", name_or_path or "")
        config = ScaleDownConfig(**config_kwargs)  # validates the settings before any heavy work

        if config.compressor_type != "n_layers":
            source = compressor if compressor is not None else config.compressor_name_or_path
            if isinstance(source, PreTrainedModel):
                config.compressor_name_or_path = source.name_or_path or config.compressor_name_or_path
                compressor = source
            else:  # the tokenizer (and the saved config) must name the compressor actually loaded
                config.compressor_name_or_path = str(source)
            if compressor_tokenizer is None:
                compressor_tokenizer = AutoTokenizer.from_pretrained(config.compressor_name_or_path)
        tokenizer, compressor_tokenizer = prepare_tokenizers(config, tokenizer, compressor_tokenizer)
        if config.compressor_type != "n_layers" and not isinstance(compressor, PreTrainedModel):
            compressor = AutoModel.from_pretrained(config.compressor_name_or_path, **compressor_kwargs)
        grow_vocabulary(generator, len(tokenizer))
        config.generator_config = generator.config

        if config.compressor_type == "n_layers":
            compressor = _copy_first_layers(generator, config)
        else:
            grow_vocabulary(compressor, len(compressor_tokenizer))
            config.compressor_config = compressor.config
        compressor.to(generator.device)

        model = cls(config, generator=generator, compressor=compressor)
        model.tokenizer = tokenizer
        model.compressor_tokenizer = compressor_tokenizer
        if model.lexical_prior is not None:
            model.lexical_prior.set_vocabulary(compressor_tokenizer)
        model._setup_generation_config()
        return model.eval()

    def _setup_generation_config(self):
        generation_config = copy.deepcopy(self.generator.generation_config)
        generation_config.pad_token_id = self.tokenizer.pad_token_id
        if generation_config.max_new_tokens is None:
            generation_config.max_new_tokens = 128
        # Never emit the placeholders the model reads its documents through.
        special = [self.config.memory_token_id, *self.config.compressor_memory_token_ids]
        special += [self.config.document_separator_token_id, self.config.rerank_token_id]
        vocab = self.generator.get_output_embeddings().weight.shape[0]
        if self.config.compressor_type == "n_layers":
            generation_config.suppress_tokens = sorted({t for t in special if t is not None and t < vocab})
        else:
            generation_config.suppress_tokens = [self.config.memory_token_id]
        self.generation_config = generation_config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a ScaleDown checkpoint (weights, configuration and both tokenizers) in eval mode, ready to answer.
        Which weights train is the trainers' rule (`scaledown.training.prepare_model_for_training`), not the
        loader's. Takes the usual `from_pretrained` arguments (`dtype`, `device_map`, `revision`, ...). An
        adapter-only export (`save_pretrained(..., adapter_only=True)`) loads its base generator first.

        `dtype="auto"` means the fast dtype of the device the model lands on ([`fast_dtype`]: bfloat16
        where it computes in it natively, else float32 on a CPU), not the checkpoint's dtype: a folder trained in
        float32 loads in bfloat16 on a CPU with AVX512-BF16/AMX. Without `dtype`, transformers' default applies."""
        kwargs = resolve_auto_dtype(kwargs)
        kwargs.setdefault("key_mapping", LEGACY_KEY_MAPPING)  # older weight names load into today's modules
        hub_kwargs = {k: kwargs[k] for k in TOKENIZER_HUB_KWARGS if k in kwargs}
        subfolder = kwargs.get("subfolder", "")
        config = kwargs.get("config")
        # An Auto class hands over the config it loaded; `trust_remote_code` is for the Auto classes only (a config
        # class given it warns that it is ignored).
        if getattr(config, "model_type", None) != ScaleDownConfig.model_type and pretrained_model_name_or_path:
            config_kwargs = {k: v for k, v in hub_kwargs.items() if k != "trust_remote_code"}
            config = ScaleDownConfig.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder, **config_kwargs
            )
        if getattr(config, "adapter_only", False):
            # The normal path (sharded files, dtype, device_map, key mapping) around the referenced base generator:
            # the export holds every other weight; the base generator's own weights are the only ones missing.
            generator = cls._adapter_only_base(config, kwargs)
            # transformers 5 re-creates non-persistent buffers (rotary frequencies) while it loads: keep the base's.
            buffers = {name: buffer.clone() for name, buffer in generator.named_buffers()}
            kwargs.update(config=config, generator=generator)
            loader_logger = logging.get_logger("transformers.modeling_utils")
            level = loader_logger.level
            loader_logger.setLevel(logging.ERROR)  # its "newly initialized" list would name the base's weights
            try:
                model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            finally:
                loader_logger.setLevel(level)
            with torch.no_grad():
                for name, buffer in model.generator.named_buffers():
                    if name in buffers:
                        buffer.copy_(buffers[name])
            # Whatever the loader counts as missing (transformers 5 counts no weight it thinks initialised), the
            # export must hold every weight but the base generator's own (a tied output layer may be absent).
            saved = checkpoint_weight_names(str(pretrained_model_name_or_path), subfolder, hub_kwargs)
            tied = {"generator.lm_head.weight"} if model.generator.config.tie_word_embeddings else set()
            if lacking := sorted(set(model._adapter_state_dict()) - saved - tied):
                raise ValueError(f"The adapter-only export {pretrained_model_name_or_path} lacks {lacking[:5]}.")
            del model.config.adapter_only
        else:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if pretrained_model_name_or_path is not None:
            model._load_tokenizers(str(pretrained_model_name_or_path), subfolder, hub_kwargs)
        return model

    @property
    def processor(self) -> ScaleDownProcessor:
        """The model's [`ScaleDownProcessor`]: its two tokenizers and its configuration, building every input from
        text (what `generate_from_text`, `compress_documents`, the collators and the evaluation use)."""
        self._check_tokenizers()
        processor = self.__dict__.get("_processor")
        if (
            processor is None
            or processor.tokenizer is not self.tokenizer
            or processor.compressor_tokenizer is not self.compressor_tokenizer
            or processor.config is not self.config
        ):
            processor = ScaleDownProcessor(self.tokenizer, self.compressor_tokenizer, self.config)
            self.__dict__["_processor"] = processor
        return processor

    def _load_tokenizers(self, name_or_path: str, subfolder: str, hub_kwargs: dict):
        self.tokenizer = load_tokenizer(name_or_path, subfolder, hub_kwargs, self.config)
        if self.tokenizer is None or self.config.compressor_type == "n_layers":
            self.compressor_tokenizer = self.tokenizer
            return
        compressor_folder = f"{subfolder}/{COMPRESSOR_TOKENIZER_FOLDER}" if subfolder else COMPRESSOR_TOKENIZER_FOLDER
        self.compressor_tokenizer = load_tokenizer(name_or_path, compressor_folder, hub_kwargs, self.config)

    # ------------------------------------------------------------------ compression
    def compress(
        self,
        compressor_input_ids: torch.LongTensor,
        compressor_attention_mask: torch.LongTensor | None = None,
    ) -> ScaleDownCompressorOutput:
        r"""
        Compress a batch of (query, document) pairs built by [`build_compressor_inputs`].

        Args:
            compressor_input_ids (`torch.LongTensor` of shape `(num_pairs, length)`):
                Token ids; every row holds each memory token once (and the `<RR>` token when reranking).
            compressor_attention_mask (`torch.LongTensor` of shape `(num_pairs, length)`, *optional*):
                1 for real tokens, 0 for padding.
        """
        config = self.config
        if compressor_attention_mask is None:
            compressor_attention_mask = torch.ones_like(compressor_input_ids)
        num_pairs = compressor_input_ids.shape[0]
        generator_width = _hidden_size(self.generator.config)
        if num_pairs == 0:
            embeds = self.get_input_embeddings().weight
            empty = embeds.new_zeros((0, config.num_memory_tokens, generator_width))
            scores = embeds.new_zeros((0,)) if config.enable_reranking else None
            return ScaleDownCompressorOutput(memory_embeddings=empty, rerank_scores=scores)
        extra = {} if config.compressor_type == "encoder" else {"use_cache": False}
        hidden = self.compressor(
            input_ids=compressor_input_ids, attention_mask=compressor_attention_mask, **extra
        ).last_hidden_state
        return self._read_memory(hidden, compressor_input_ids)

    def _read_memory(self, hidden: torch.Tensor, input_ids: torch.LongTensor) -> ScaleDownCompressorOutput:
        """Memory embeddings (projected) and relevance scores from compressor hidden states `(rows, length, width)`
        and the ids `(rows, length)` they were computed for. Gathers by position (static shapes: one XLA graph)."""
        config = self.config
        num_rows = input_ids.shape[0]
        memory_ids = torch.tensor(config.compressor_memory_token_ids, device=input_ids.device)
        is_memory = _isin(input_ids, memory_ids)
        if _can_check(input_ids) and not bool((is_memory.sum(dim=1) == config.num_memory_tokens).all()):
            raise ValueError(
                f"Every compressor input must hold the {config.num_memory_tokens} memory tokens exactly once; found "
                f"{int(is_memory.sum())} memory tokens in {num_rows} rows."
            )
        slot_scores = None
        if config.memory_slots in ("chunk_mean", "chunk_attention"):
            scores = self.slot_scorer(hidden).squeeze(-1) if self.slot_scorer is not None else None
            memory = _chunk_means(
                hidden, input_ids, is_memory, config.document_separator_token_id, config.num_memory_tokens, scores
            )
        elif config.memory_slots == "span":
            slot_scores, is_document = self.score_slots(hidden, input_ids, is_memory)
            positions, inside = _span_positions(
                slot_scores.detach(), is_document, config.num_memory_tokens, getattr(config, "span_windows", 1)
            )
            memory = torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            memory = memory * inside.unsqueeze(-1).to(memory.dtype)
        else:
            memory = _gather_positions(hidden, is_memory, config.num_memory_tokens)
        if self.projector is not None:
            memory = self.projector(memory)
        scores = None
        if self.rerank_head is not None:
            is_rerank = input_ids == config.rerank_token_id
            if _can_check(input_ids) and not bool((is_rerank.sum(dim=1) == 1).all()):
                raise ValueError(f"Every compressor input must hold the {config.rerank_token} token exactly once.")
            scores = self.rerank_head(_gather_positions(hidden, is_rerank, 1)[:, 0]).squeeze(-1)
        return ScaleDownCompressorOutput(memory_embeddings=memory, rerank_scores=scores, slot_scores=slot_scores)

    def score_slots(
        self, hidden: torch.Tensor, input_ids: torch.LongTensor, is_memory: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The span selector's scores `(rows, length)` of compressor states `hidden` `(rows, length, width)` computed
        for `input_ids` (`-inf` outside the document tokens), and the document-token mask `(rows, length)`. The
        selector reads each row's start, query, separator and document tokens (never its memory tokens or padding,
        which follow them). `memory_slots="span"` only."""
        if self.slot_selector is None:
            raise ValueError('`score_slots` needs a model with `memory_slots="span"`.')
        if is_memory is None:
            is_memory = _isin(
                input_ids, torch.tensor(self.config.compressor_memory_token_ids, device=input_ids.device)
            )
        is_document = _document_mask(input_ids, is_memory, self.config.document_separator_token_id)
        readable = is_memory.long().cumsum(1) == 0
        scores = self.slot_selector(hidden.to(self.slot_selector.input_proj.weight.dtype), readable)
        scores = scores.masked_fill(~is_document, float("-inf"))
        if self.lexical_prior is not None:  # the selector learns a correction to the prior
            scores = torch.log_softmax(scores, dim=-1) + self.config.span_lexical_weight * self.lexical_prior(
                input_ids, is_document, readable & ~is_document
            )
        return scores, is_document

    def _compress_after_prefix(self, prefix: list[int], suffixes: list[list[int]], length: int, device):
        """Decoder compressors: encode the query prefix once, then every document suffix on top of its cached
        keys/values (one forward pass for all suffixes, right-padded to `length`)."""
        cache_arg = "cache" if "cache" in inspect.signature(self.compressor.forward).parameters else "past_key_values"
        prefix_ids = torch.tensor([prefix], device=device)
        out = self.compressor(input_ids=prefix_ids, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(len(suffixes))
        inputs = pad_compressor_rows(self.compressor_tokenizer, suffixes, length)
        ids, mask = inputs["compressor_input_ids"].to(device), inputs["compressor_attention_mask"].to(device)
        full_mask = torch.cat([mask.new_ones(len(suffixes), len(prefix)), mask], dim=1)
        positions = torch.arange(len(prefix), len(prefix) + ids.shape[1], device=device).expand(len(suffixes), -1)
        hidden = self.compressor(
            input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True, **{cache_arg: cache}
        ).last_hidden_state
        if self.config.memory_slots == "span":  # the selector reads the query too
            hidden = torch.cat([out.last_hidden_state.expand(len(suffixes), -1, -1), hidden], dim=1)
            ids = torch.cat([prefix_ids.expand(len(suffixes), -1), ids], dim=1)
        return self._read_memory(hidden, ids)

    def _check_tokenizers(self):
        if self.tokenizer is None or self.compressor_tokenizer is None:
            raise ValueError(
                "This model has no tokenizers: build it with `from_generator` or load it with `from_pretrained` from "
                "a folder that holds them, or set `model.tokenizer` / `model.compressor_tokenizer`."
            )

    def compress_for_questions(
        self, questions: list[str], documents: list[list[str]], **kwargs
    ) -> "CompressedDocuments":
        """The questions' documents compressed as this model reads them: with their question (online) or alone
        (offline). What `generate_from_text`, the evaluation and the benchmark call; `kwargs` as for
        [`compress_documents`]."""
        if self.config.query_dependent:
            return self.compress_documents(questions, documents, **kwargs)
        return self.compress_documents(documents=documents, **kwargs)

    @serialised
    @torch.no_grad()
    def compress_documents(
        self,
        questions: list[str] | None = None,
        documents: list[list[str]] | None = None,
        batch_size: int | None = None,
        bucket_size: int = 32,
        reuse_query_prefix: bool | None = None,
    ) -> CompressedDocuments:
        r"""
        Compress the retrieved documents of each question (online model, `config.query_dependent=True`, OSCAR), or
        documents on their own (offline model: `compress_documents(documents=...)`, e.g. to store them once; see
        [`compress_for_questions`] for code that serves both).

        Documents longer than `config.doc_max_length` tokens (and queries longer than `config.query_max_length`) are
        truncated. The result for a (question, document) pair does not depend on the rest of the batch.

        Args:
            questions (`list[str]`): the queries (an online model needs them; an offline model refuses them).
            documents (`list[list[str]]`): per question (or per group, offline), its documents (any number).
            batch_size (`int`, *optional*): rows per compressor call; all at once by default.
            bucket_size (`int`, *optional*, defaults to 32): rows are padded to a multiple of this length (at most the
                longest possible row) and only rows of one length share a forward pass, so that every row always meets
                the same shapes whatever the batch: results are independent of the batch.
            reuse_query_prefix (`bool`, *optional*): with a decoder compressor (`"n_layers"`, `"llm"`), encode the
                query prefix once per question and reuse its keys/values for all of its documents (same outputs
                within fp32 tolerance, less compute, but one compressor pass per question). Default: on for decoder
                compressors on a CPU, where compute dominates; off on accelerators, where a few large passes over all
                (question, document) rows cost less than one small, launch-bound pass per question. Encoders read the
                query bidirectionally and cannot reuse it.

        Returns:
            [`CompressedDocuments`]: per question a tensor `(n_docs, num_memory_tokens, generator_hidden_size)`,
            and `.rerank_scores` (per question `(n_docs,)`) when reranking is enabled.
        """
        if documents is None:
            raise ValueError("`documents` is required: per question (or group), a list of document strings.")
        if not self.config.query_dependent:
            if questions is not None:
                raise ValueError(
                    "This model compresses offline (`query_dependent=False`): it reads documents without their "
                    "question. Call `compress_documents(documents=...)`, or `compress_for_questions(questions, "
                    "documents)`."
                )
            questions = [""] * len(documents) if isinstance(documents, Sequence) else documents
        elif questions is None:
            raise ValueError(
                "This model compresses online (`query_dependent=True`, OSCAR): it reads each document with its "
                "question. Call `compress_documents(questions, documents)`."
            )
        validate_rag_inputs(questions, documents)
        check_positive(batch_size=batch_size, bucket_size=bucket_size)
        self._check_tokenizers()
        decoder = self.config.compressor_type != "encoder"
        tokenizer, device = self.compressor_tokenizer, next(self.compressor.parameters()).device
        if reuse_query_prefix is None:
            reuse_query_prefix = decoder and device.type == "cpu"
        elif reuse_query_prefix and not decoder:
            raise ValueError("`reuse_query_prefix` needs a decoder compressor (`n_layers` or `llm`).")
        parts = compressor_parts(tokenizer, self.config, list(questions), documents)
        # The longest possible row (a suffix alone when the prefix is reused) is a bucket of its own: documents cut at
        # `doc_max_length`, the usual case, are never padded (at 128 tokens a 32-token bucket would add 17 %).
        limit = max_compressor_length(tokenizer, self.config, suffix_only=reuse_query_prefix)

        def bucket(length: int) -> int:
            return min(-(-length // bucket_size) * bucket_size, limit)

        # Groups of (question or None, bucketed length) -> row indices; a group shares forward passes.
        rows, groups = [], {}
        for q, (prefix, suffixes) in enumerate(parts):
            for suffix in suffixes:
                key = (q, bucket(len(suffix))) if reuse_query_prefix else (None, bucket(len(prefix) + len(suffix)))
                groups.setdefault(key, []).append(len(rows))
                rows.append(suffix if reuse_query_prefix else prefix + suffix)
        outputs: list[tuple[torch.Tensor, torch.Tensor | None]] = [None] * len(rows)
        for (q, length), indices in sorted(groups.items(), key=lambda item: (item[0][0] or 0, item[0][1])):
            step = batch_size or len(indices)
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                if reuse_query_prefix:
                    out = self._compress_after_prefix(parts[q][0], [rows[i] for i in chunk], length, device)
                else:
                    inputs = pad_compressor_rows(tokenizer, [rows[i] for i in chunk], length)
                    out = self.compress(**{k: v.to(device) for k, v in inputs.items()})
                for position, index in enumerate(chunk):
                    score = out.rerank_scores[position] if out.rerank_scores is not None else None
                    outputs[index] = (out.memory_embeddings[position], score)
        if rows:
            memory = torch.stack([m for m, _ in outputs])
            scores = torch.stack([r for _, r in outputs]) if self.config.enable_reranking else None
        else:
            empty = self.compress(**pad_compressor_rows(tokenizer, [], 1))
            memory, scores = empty.memory_embeddings, empty.rerank_scores
        counts = [len(docs) for docs in documents]
        return CompressedDocuments(memory.split(counts), scores.split(counts) if scores is not None else None)

    # ------------------------------------------------------------------ generator side
    def _merge_memory(self, input_ids: torch.LongTensor, memory_embeddings: torch.Tensor | None) -> torch.Tensor:
        """Embed `input_ids` and, with `config.memory_injection_layer == 0`, overwrite the `<MEM>` placeholders, in
        reading order, with `memory_embeddings` (deeper injection happens in [`_memory_injection`]). Static shapes (a
        gather and a `where`, no boolean indexing), so that XLA compiles it once."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        placeholder = input_ids == self.config.memory_token_id
        expected = 0 if memory_embeddings is None else memory_embeddings.shape[0] * memory_embeddings.shape[1]
        if _can_check(input_ids) and (found := int(placeholder.sum())) != expected:
            raise ValueError(
                f"The prompts hold {found} `{self.config.memory_token}` placeholders but {expected} memory embeddings "
                f"were given ({self.config.num_memory_tokens} per document)."
            )
        if expected == 0 or self.config.memory_injection_layer > 0:
            return inputs_embeds
        return _scatter_memory(inputs_embeds, placeholder, memory_embeddings.reshape(-1, memory_embeddings.shape[-1]))

    def _generator_layers(self) -> nn.ModuleList:
        decoder = self.generator.get_decoder() if hasattr(self.generator, "get_decoder") else self.generator.model
        layers = getattr(decoder, "layers", None)
        if layers is None:
            raise ValueError(
                f"`memory_injection_layer` > 0 needs a generator with the usual `model.layers` layout; "
                f"{type(self.generator).__name__} has none."
            )
        return layers

    @contextlib.contextmanager
    def _memory_injection(self, input_ids: torch.LongTensor, memory_embeddings: torch.Tensor | None):
        """With `config.memory_injection_layer = k > 0`: during the block, the hidden states at the `<MEM>`
        placeholders of `input_ids` are replaced by `memory_embeddings` as they enter generator layer `k` (a forward
        pre-hook). Only passes over the whole prompt are touched (training, scoring, the prefill of `generate`):
        decoding steps read the memory from the key/value cache. Rows expanded by `generate` (beam search,
        `num_return_sequences`) get their prompt's memory."""
        layer_index = self.config.memory_injection_layer
        if layer_index == 0 or memory_embeddings is None or memory_embeddings.shape[0] == 0:
            yield
            return
        placeholder = input_ids == self.config.memory_token_id
        memory = memory_embeddings.reshape(-1, memory_embeddings.shape[-1])

        def inject(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] != placeholder.shape[1]:
                return None
            mask, rows = placeholder.to(hidden.device), memory
            if hidden.shape[0] != mask.shape[0]:  # rows repeated by `generate`
                repeat = hidden.shape[0] // mask.shape[0]
                per_row = rows.split(mask.sum(1).tolist())
                rows = torch.cat([r for r in per_row for _ in range(repeat)])
                mask = mask.repeat_interleave(repeat, dim=0)
            hidden = _scatter_memory(hidden, mask, rows)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        handle = self._generator_layers()[layer_index].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        compressor_input_ids: torch.LongTensor | None = None,
        compressor_attention_mask: torch.Tensor | None = None,
        memory_embeddings: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        reduction: str = "mean",
        **kwargs,
    ) -> ScaleDownCausalLMOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Generator prompts (and answers) holding `num_memory_tokens` `<MEM>` placeholders per document, built by
                [`build_generator_inputs`].
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                Generator attention mask.
            compressor_input_ids (`torch.LongTensor` of shape `(num_pairs, compressor_length)`, *optional*):
                Compressor inputs of every (question, document) pair, question-major in the order the placeholders
                appear in `input_ids`, built by [`build_compressor_inputs`].
            compressor_attention_mask (`torch.Tensor` of shape `(num_pairs, compressor_length)`, *optional*):
                Compressor attention mask.
            memory_embeddings (`torch.FloatTensor` of shape `(num_pairs, num_memory_tokens, hidden_size)`, *optional*):
                Already compressed documents, instead of `compressor_input_ids`.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Target ids for the generator's next-token cross-entropy; -100 is ignored.
            reduction (`str`, *optional*, defaults to `"mean"`):
                `"mean"` (per label token) or `"sum"` for the returned `loss`. optimum-neuron's `NeuronTrainer` asks
                for `"sum"` and divides by the batch's label-token count itself.
            position_ids, inputs_embeds, use_cache, kwargs:
                Passed to the generator (`inputs_embeds` replaces `input_ids` and then must already hold the memory).
                `use_cache` defaults to `False`: this forward serves training and scoring; `generate` handles caching.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"`reduction` must be 'mean' or 'sum', got {reduction!r}.")
        rerank_scores = slot_scores = None
        if compressor_input_ids is not None:
            if memory_embeddings is not None:
                raise ValueError("Give either `compressor_input_ids` or `memory_embeddings`, not both.")
            compressed = self.compress(compressor_input_ids, compressor_attention_mask)
            memory_embeddings, rerank_scores = compressed.memory_embeddings, compressed.rerank_scores
            slot_scores = compressed.slot_scores
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Give `input_ids` (or `inputs_embeds`) for the generator.")
            inputs_embeds = self._merge_memory(input_ids, memory_embeddings)
        elif input_ids is not None:
            raise ValueError("Give either `input_ids` or `inputs_embeds`, not both.")
        elif memory_embeddings is not None and self.config.memory_injection_layer > 0:
            raise ValueError(
                "With `memory_injection_layer` > 0 the memory is written at the `<MEM>` placeholders of `input_ids`: "
                "give `input_ids`, not `inputs_embeds`."
            )
        injection = (
            self._memory_injection(input_ids, memory_embeddings) if input_ids is not None else contextlib.nullcontext()
        )
        with model_lock(self), injection:
            outputs = self.generator(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels if reduction == "mean" else None,
                use_cache=bool(use_cache),
                return_dict=True,
                **kwargs,
            )
        loss = outputs.loss
        if labels is not None and reduction == "sum":
            logits, targets = outputs.logits[:, :-1].float(), labels[:, 1:].to(outputs.logits.device)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
        return ScaleDownCausalLMOutput(
            loss=loss,
            logits=outputs.logits,
            rerank_scores=rerank_scores,
            memory_embeddings=memory_embeddings,
            slot_scores=slot_scores,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    @serialised
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        compressor_input_ids: torch.LongTensor | None = None,
        compressor_attention_mask: torch.Tensor | None = None,
        memory_embeddings: torch.FloatTensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        r"""
        Generate from left-padded prompts with `<MEM>` placeholders. Takes every `GenerationConfig` option (greedy,
        sampling, beam search, `max_new_tokens`, `stop_strings`, ...) through `generate_kwargs`; the model's
        `generation_config` is the default. Returns the new tokens only, `(batch_size * num_return_sequences, n)`.
        """
        if input_ids is None:
            raise ValueError("`generate` needs the generator prompts as `input_ids`.")
        self._merge_for_inference()
        if compressor_input_ids is not None:
            if memory_embeddings is not None:
                raise ValueError("Give either `compressor_input_ids` or `memory_embeddings`, not both.")
            memory_embeddings = self.compress(compressor_input_ids, compressor_attention_mask).memory_embeddings
        inputs_embeds = self._merge_memory(input_ids, memory_embeddings)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # One GenerationConfig: the model's (or the one given) updated with the generation options among the kwargs.
        generation_config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        model_kwargs = generation_config.update(**generate_kwargs)
        if generation_config.stop_strings and "tokenizer" not in model_kwargs:
            model_kwargs["tokenizer"] = self.tokenizer
        with _contiguous_head_input(self.generator), self._memory_injection(input_ids, memory_embeddings):
            return self.generator.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask.to(inputs_embeds.device),
                generation_config=generation_config,
                **model_kwargs,
            )

    @serialised
    @torch.no_grad()
    def generate_from_compressed(
        self, questions: list[str], compressed: Sequence[torch.Tensor], **generate_kwargs
    ) -> list[str]:
        r"""
        Answer `questions` from documents compressed by [`compress_documents`].

        Args:
            questions (`list[str]`): the queries, in clear text.
            compressed: per question a tensor `(n_docs, num_memory_tokens, generator_hidden_size)`.
            generate_kwargs: any `generate` / `GenerationConfig` option.

        Returns:
            `list[str]`: one answer per question (per returned sequence with `num_return_sequences`).
        """
        self._check_tokenizers()
        if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
            raise ValueError("`questions` must be a non-empty list of strings.")
        if len(compressed) != len(questions):
            raise ValueError(f"Got {len(compressed)} compressed document sets for {len(questions)} questions.")
        width = _hidden_size(self.generator.config)
        expected = (self.config.num_memory_tokens, width)
        for i, memory in enumerate(compressed):
            if not torch.is_tensor(memory) or memory.dim() != 3 or tuple(memory.shape[1:]) != expected:
                shape = tuple(memory.shape) if torch.is_tensor(memory) else type(memory).__name__
                raise ValueError(f"compressed[{i}] must be a tensor (n_docs, {expected[0]}, {width}), got {shape}.")
        segments = memory_segments(self.config, [memory.shape[0] for memory in compressed])
        inputs = build_generator_inputs(self.tokenizer, self.config, list(questions), segments)
        self._check_context(inputs["attention_mask"], [m.shape[0] for m in compressed], generate_kwargs)
        device = self.get_input_embeddings().weight.device
        memory = torch.cat([m.to(device) for m in compressed]) if compressed else None
        output_ids = self.generate(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            memory_embeddings=memory,
            **generate_kwargs,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(output_ids, skip_special_tokens=True)]

    def _check_context(self, attention_mask: torch.Tensor, documents_per_row: list[int], generate_kwargs: dict):
        """Refuse prompts that do not fit the generator's positions (with the tokens to generate): the model would
        otherwise answer from a silently overflowing context."""
        limit = getattr(self.generator.config.get_text_config(), "max_position_embeddings", None)
        if not limit:
            return
        new_tokens = generate_kwargs.get("max_new_tokens") or self.generation_config.max_new_tokens or 0
        lengths = attention_mask.sum(1).tolist()
        for row, (length, count) in enumerate(zip(lengths, documents_per_row)):
            if length + new_tokens > limit:
                raise ValueError(
                    f"Question {row}: its prompt holds {length} tokens ({count} documents) and {new_tokens} more are "
                    f"to be generated, but the generator reads at most {limit} positions. Pass fewer documents (e.g. "
                    "the top-ranked ones that fit), a shorter question or a smaller `max_new_tokens`."
                )

    @serialised
    @torch.no_grad()
    def generate_uncompressed(
        self, questions: list[str], documents: list[list[str]], use_adapters: bool = False, **generate_kwargs
    ) -> list[str]:
        r"""
        The uncompressed baseline: the generator reads the raw documents (each truncated to `config.doc_max_length`
        tokens) in the very prompt the compressed model sees, and answers with the same generation options. By default
        the LoRA adapters are off, so this is the base generator.
        """
        validate_rag_inputs(questions, documents)
        self._check_tokenizers()
        segments = raw_document_segments(self.tokenizer, self.config, documents)
        inputs = build_generator_inputs(self.tokenizer, self.config, list(questions), segments)
        self._check_context(inputs["attention_mask"], [len(d) for d in documents], generate_kwargs)
        device = self.get_input_embeddings().weight.device
        context = contextlib.nullcontext() if use_adapters else self.generator_adapters_disabled()
        with context:
            output_ids = self.generate(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
                **generate_kwargs,
            )
        return [text.strip() for text in self.tokenizer.batch_decode(output_ids, skip_special_tokens=True)]

    @serialised
    @torch.no_grad()
    def generate_from_text(self, questions: list[str], documents: list[list[str]], **generate_kwargs) -> list[str]:
        r"""
        Compress each question's documents and answer it. See [`compress_documents`] (truncation, zero documents)
        and [`generate_from_compressed`] (generation options).
        """
        compressed = self.compress_for_questions(questions, documents)
        return self.generate_from_compressed(questions, compressed, **generate_kwargs)


def _copy_first_layers(generator: PreTrainedModel, config: ScaleDownConfig) -> PreTrainedModel:
    """A separate copy of the generator's embeddings and first `num_compressor_layers` layers (an `AutoModel`)."""
    compressor_config = config.get_compressor_config()
    compressor = AutoModel.from_config(compressor_config, dtype=generator.dtype)
    base = generator.get_decoder() if hasattr(generator, "get_decoder") else generator.base_model
    source = base.state_dict()
    target = compressor.state_dict()
    missing = [k for k in target if k not in source]
    if missing:
        raise ValueError(
            f"Cannot copy the generator's first layers into an N-layers compressor: {type(base).__name__} lacks "
            f"{missing[:5]}. The N-layers compressor needs the usual `model.layers` decoder layout."
        )
    compressor.load_state_dict({k: source[k] for k in target}, strict=True)
    return compressor


__all__ = [
    "CompressedDocuments",
    "ScaleDownCausalLMOutput",
    "ScaleDownCompressorOutput",
    "ScaleDownForCausalLM",
    "ScaleDownPreTrainedModel",
    "build_compressor_inputs",
    "build_generator_inputs",
    "compressor_rows",
    "max_compressor_length",
    "build_generator_prompt",
    "validate_rag_inputs",
]
