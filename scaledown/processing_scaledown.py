# Copyright 2026 The ScaleDown Authors. Licensed under the Apache License, Version 2.0.
"""ScaleDown's text side: `ScaleDownProcessor` and the input builders it is made of.

All user text (questions, documents, answers) is tokenised here, once, with `split_special_tokens=True`: no reserved
token (`<MEM>`, `<MEM_i>`, `<DOC>`, `<RR>`) or chat-template token can arise from it. The processor holds the
generator's tokenizer (with the memory token), the compressor's tokenizer (the same object for an N-layers compressor)
and the model's `ScaleDownConfig` (lengths, token ids, prompt); it builds the compressor rows
`[query][<DOC>][document][<MEM_1..l>]([<RR>])` and the generator's chat prompts whose `<MEM>` placeholders receive the
memory, and validates the inputs. Like the modeling file, it is copied next to every saved checkpoint as Hub remote
code and imports only torch, transformers and the configuration file beside it.
"""

import copy
import os
from collections.abc import Sequence

import torch
from transformers import AddedToken, AutoTokenizer
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_scaledown import ScaleDownConfig


logger = logging.get_logger(__name__)

PROCESSOR_CONFIG_NAME = "processor_config.json"


_BACKGROUND_MARKER = "@@SCALEDOWN_BACKGROUND@@"


_QUESTION_MARKER = "@@SCALEDOWN_QUESTION@@"


TOKENIZER_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code")


COMPRESSOR_TOKENIZER_FOLDER = "compressor_tokenizer"


def check_text(text: str, where: str, error: type[Exception] = ValueError) -> None:
    """Raise `error` naming `where` when `text` cannot be encoded as UTF-8 (a lone surrogate, e.g. from text decoded
    with `errors="surrogateescape"` or a truncated UTF-16 pair): tokenizers refuse such text with an unclear
    `TypeError`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise error(
            f"{where} is not valid Unicode text: {err.reason} at character {err.start} ({text[err.start]!r}). Clean "
            "it first, e.g. `text.encode('utf-8', 'replace').decode()`."
        ) from None


def check_positive(**values) -> None:
    """Raise a `ValueError` naming the first of `values` that is not a positive integer (or, for a list, holds one
    that is not). `None` stands for a default and passes."""
    for name, value in values.items():
        if value is None:
            continue
        several = isinstance(value, (list, tuple))
        items = value if several else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
            what = "a non-empty list of positive integers" if several else "a positive integer"
            raise ValueError(f"`{name}` must be {what}, got {value!r}.")


def validate_rag_inputs(questions, documents) -> None:
    """Raise a `ValueError` naming the problem when `questions`/`documents` are not a list of strings and a list (of
    the same length) of lists of strings."""
    if isinstance(questions, str) or not isinstance(questions, Sequence):
        raise ValueError(f"`questions` must be a list of strings, got {type(questions).__name__}.")
    if len(questions) == 0:
        raise ValueError("`questions` is empty: give at least one question.")
    for i, question in enumerate(questions):
        if not isinstance(question, str):
            raise ValueError(f"questions[{i}] must be a string, got {type(question).__name__}.")
        check_text(question, f"questions[{i}]")
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise ValueError(f"`documents` must be a list (one per question) of lists of strings, got {type(documents)}.")
    if len(questions) != len(documents):
        raise ValueError(
            f"`questions` and `documents` must have the same length (one list of documents per question), got "
            f"{len(questions)} questions and {len(documents)} document lists."
        )
    for i, docs in enumerate(documents):
        if isinstance(docs, str) or not isinstance(docs, Sequence):
            raise ValueError(f"documents[{i}] must be a list of strings, got {type(docs).__name__}.")
        for j, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise ValueError(f"documents[{i}][{j}] must be a string, got {type(doc).__name__}.")
            check_text(doc, f"documents[{i}][{j}]")


def _pad(sequences: list[list[int]], pad_id: int, side: str, length: int | None = None, fill: int | None = None):
    """Pad lists of ids to one length; returns (ids, attention_mask) as long tensors."""
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"A sequence of {longest} tokens does not fit the fixed length {length}.")
    fill = pad_id if fill is None else fill
    ids, mask = [], []
    for seq in sequences:
        pad = [fill] * (length - len(seq))
        ones, zeros = [1] * len(seq), [0] * len(pad)
        ids.append(pad + list(seq) if side == "left" else list(seq) + pad)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _encode(tokenizer, texts: list[str], max_length: int | None = None, *, user_text: bool = True) -> list[list[int]]:
    """Token ids of `texts`, without the tokenizer's own start/end tokens.

    User text (questions, documents, answers: whatever a retriever or a user hands over) is tokenised with
    `split_special_tokens=True`: the literal text of a special or reserved token (`<MEM>`, `<MEM_1>`, `<DOC>`, `<RR>`,
    the chat template's `<|im_start|>`, ...) becomes ordinary text pieces, never the control token itself. Only text
    rendered by the chat template (`user_text=False`) keeps its special tokens.
    """
    if not texts:
        return []
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    if user_text:
        kwargs["split_special_tokens"] = True
    return tokenizer(list(texts), add_special_tokens=False, **kwargs)["input_ids"]


def compressor_parts(tokenizer, config: ScaleDownConfig, questions: list[str], documents: list[list[str]]):
    """Per question, `(prefix, suffixes)`: the query prefix `[start][query][<DOC>]` shared by all its documents and,
    per document, `[document][<MEM_1>..<MEM_l>]([<RR>])`. The query is truncated to `config.query_max_length` tokens
    and each document to `config.doc_max_length` tokens; `start` is the tokenizer's CLS (else BOS) token if any. With
    `config.query_dependent=False` (offline compression) the query is left out: `[start][<DOC>]`."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    start = [] if start is None else [start]
    suffix = list(config.compressor_memory_token_ids)
    if config.enable_reranking:
        suffix.append(config.rerank_token_id)
    if not getattr(config, "query_dependent", True):  # offline compression: the document alone
        questions = [""] * len(questions)
    query_ids = _encode(tokenizer, questions, config.query_max_length)
    doc_ids = iter(_encode(tokenizer, [doc for docs in documents for doc in docs], config.doc_max_length))
    return [
        (start + query + [config.document_separator_token_id], [next(doc_ids) + suffix for _ in docs])
        for query, docs in zip(query_ids, documents)
    ]


def compressor_rows(tokenizer, config: ScaleDownConfig, questions: list[str], documents: list[list[str]]):
    """Token ids of every (question, document) pair, `[start][query][<DOC>][document][<MEM_1>..<MEM_l>]([<RR>])`,
    question-major in document order (see [`compressor_parts`])."""
    parts = compressor_parts(tokenizer, config, questions, documents)
    return [prefix + suffix for prefix, suffixes in parts for suffix in suffixes]


def max_compressor_length(tokenizer, config: ScaleDownConfig, suffix_only: bool = False) -> int:
    """The longest possible compressor row: the fixed length under which every batch has the same shape. With
    `suffix_only`, the longest document suffix `[document][<MEM_1>..<MEM_l>]([<RR>])` of [`compressor_parts`]."""
    suffix = config.doc_max_length + config.num_memory_tokens + config.enable_reranking
    if suffix_only:
        return suffix
    start = int(tokenizer.cls_token_id is not None or tokenizer.bos_token_id is not None)
    return start + config.query_max_length + 1 + suffix


def pad_compressor_rows(tokenizer, rows: list[list[int]], pad_to_length: int | None = None) -> dict[str, torch.Tensor]:
    length = pad_to_length or (None if rows else 1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = _pad(rows, pad_id, "right", length)
    if not rows:
        ids, mask = ids.view(0, length), mask.view(0, length)
    return {"compressor_input_ids": ids, "compressor_attention_mask": mask}


def build_compressor_inputs(
    tokenizer, config: ScaleDownConfig, questions: list[str], documents: list[list[str]], pad_to_length=None
) -> dict[str, torch.Tensor]:
    """Tokenize every (question, document) pair (see [`compressor_rows`]) and right-pad the rows to the longest one,
    or to `pad_to_length` for fixed shapes (e.g. [`max_compressor_length`]).

    Returns:
        `dict` with `compressor_input_ids` and `compressor_attention_mask`, both `(num_pairs, length)`.
    """
    return pad_compressor_rows(tokenizer, compressor_rows(tokenizer, config, questions, documents), pad_to_length)


def _render_prompt(tokenizer, system_prompt: str, with_background: bool) -> tuple[str, str, str]:
    """Render the chat prompt around the background block and the question: returns the template text before the
    background, between background and question, and after the question (the question and documents are inserted
    as ids, so that the template never reads user text)."""
    question = f"Question:{_QUESTION_MARKER}"
    user = f"Background:\n{_BACKGROUND_MARKER}\n\n{question}" if with_background else question
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (e.g. Mistral v0.2): fold it into the user turn
            messages = [{"role": "user", "content": f"{system_prompt}\n\n{user}"}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{tokenizer.bos_token or ''}{system_prompt}\n\n{user}\n\nAnswer:"
    before, _, rest = text.partition(_BACKGROUND_MARKER) if with_background else ("", "", text)
    middle, _, after = rest.partition(_QUESTION_MARKER)
    return before, middle, after


def build_generator_prompt(
    tokenizer, config: ScaleDownConfig, question: str, document_segments: list[list[int]]
) -> list[int]:
    """Token ids of the generator's chat prompt for one question.

    Each document contributes a `Document i:` header followed by its segment: `num_memory_tokens` `<MEM>`
    placeholders for a compressed document, or the document's own tokens for the uncompressed baseline. With no
    document the prompt holds the question alone. Built from ids (never by tokenizing placeholder text) so that the
    placeholders cannot merge with neighbouring characters; the question is user text (see [`_encode`]): no reserved
    or special token can arise from it.
    """
    before, middle, after = _render_prompt(tokenizer, config.system_prompt, bool(document_segments))
    ids = _encode(tokenizer, [before], user_text=False)[0] if before else []
    for i, segment in enumerate(document_segments):
        ids += _encode(tokenizer, [f"{chr(10) if i else ''}Document {i + 1}: "], user_text=False)[0] + list(segment)
    ids += _encode(tokenizer, [middle], user_text=False)[0] if middle else []
    ids += _encode(tokenizer, [f" {question}"])[0]
    return ids + _encode(tokenizer, [after], user_text=False)[0]


def memory_segments(config: ScaleDownConfig, counts: list[int]) -> list[list[list[int]]]:
    """Per question, per document, the `num_memory_tokens` `<MEM>` placeholders standing for a compressed document
    (`counts`: documents per question)."""
    placeholders = [config.memory_token_id] * config.num_memory_tokens
    return [[placeholders] * count for count in counts]


def raw_document_segments(tokenizer, config: ScaleDownConfig, documents: list[list[str]]) -> list[list[list[int]]]:
    """Per question, per document, the document's own tokens (truncated to `config.doc_max_length`): the
    uncompressed baseline's prompt."""
    return [_encode(tokenizer, list(docs), config.doc_max_length) if docs else [] for docs in documents]


def build_generator_inputs(
    tokenizer,
    config: ScaleDownConfig,
    questions: list[str],
    document_segments: list[list[list[int]]],
    answers: list[str] | None = None,
    padding_side: str = "left",
    pad_to_length: int | None = None,
    max_answer_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Batch of generator prompts (and, with `answers`, training labels).

    Args:
        document_segments: per question, per document, the ids standing for the document (see
            [`build_generator_prompt`]).
        answers: target answers; appended after the prompt with the tokenizer's EOS token. `labels` copy the answer
            tokens and mask prompt, memory slots and padding with -100.
        padding_side: `"left"` for generation, `"right"` for training.
        pad_to_length: pad every row to this length (fixed shapes, e.g. for XLA) instead of the longest row.
        max_answer_length: truncate answers to this many tokens (before the EOS token).

    Returns:
        `dict` with `input_ids`, `attention_mask` (and `labels`), each `(batch_size, length)`.
    """
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"Got {len(answers)} answers for {len(questions)} questions.")
    prompts = [build_generator_prompt(tokenizer, config, q, segs) for q, segs in zip(questions, document_segments)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if answers is None:
        ids, mask = _pad(prompts, pad_id, padding_side, pad_to_length)
        return {"input_ids": ids, "attention_mask": mask}
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    answer_ids = [a + eos for a in _encode(tokenizer, list(answers), max_answer_length)]
    sequences = [p + a for p, a in zip(prompts, answer_ids)]
    targets = [[-100] * len(p) + a for p, a in zip(prompts, answer_ids)]
    ids, mask = _pad(sequences, pad_id, padding_side, pad_to_length)
    labels, _ = _pad(targets, pad_id, padding_side, pad_to_length, fill=-100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def add_reserved_tokens(tokenizer, tokens: list[str]) -> None:
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)


def prepare_tokenizers(config: ScaleDownConfig, tokenizer, compressor_tokenizer=None):
    """Copies of the generator's tokenizer (with `config.memory_token`) and of the compressor's (with the compressor's
    memory tokens, the document separator and, when reranking, `<RR>`; for an `"n_layers"` compressor, the same
    tokenizer), each with a pad token; the reserved tokens' ids are written into `config`. The tokenizers given are
    never modified. A reserved token that already is one of a tokenizer's special tokens is refused: text could then
    become control."""
    template = config.compressor_memory_token_template
    compressor_tokens = [template.format(i + 1) for i in range(config.num_memory_tokens)]
    compressor_tokens += [config.document_separator_token]
    if config.enable_reranking:
        compressor_tokens.append(config.rerank_token)
    if clash := sorted(set(getattr(tokenizer, "all_special_tokens", [])) & {config.memory_token, *compressor_tokens}):
        raise ValueError(
            f"The reserved tokens {clash} are already special tokens of the generator's tokenizer: choose other "
            "`memory_token` / `compressor_memory_token_template` / `document_separator_token` / `rerank_token`."
        )
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    add_reserved_tokens(tokenizer, [config.memory_token])
    if config.compressor_type == "n_layers":
        compressor_tokenizer = tokenizer
    else:
        if compressor_tokenizer is None:
            raise ValueError(f"A {config.compressor_type!r} compressor needs its own tokenizer.")
        compressor_tokenizer = copy.deepcopy(compressor_tokenizer)
        if clash := sorted(set(getattr(compressor_tokenizer, "all_special_tokens", [])) & set(compressor_tokens)):
            raise ValueError(
                f"The reserved tokens {clash} are already special tokens of the compressor's tokenizer: choose "
                "other `compressor_memory_token_template` / `document_separator_token` / `rerank_token`."
            )
        if compressor_tokenizer.pad_token is None:
            compressor_tokenizer.pad_token = compressor_tokenizer.eos_token or compressor_tokenizer.unk_token
    add_reserved_tokens(compressor_tokenizer, compressor_tokens)
    config.memory_token_id = tokenizer.convert_tokens_to_ids(config.memory_token)
    config.compressor_memory_token_ids = compressor_tokenizer.convert_tokens_to_ids(
        compressor_tokens[: config.num_memory_tokens]
    )
    config.document_separator_token_id = compressor_tokenizer.convert_tokens_to_ids(config.document_separator_token)
    if config.enable_reranking:
        config.rerank_token_id = compressor_tokenizer.convert_tokens_to_ids(config.rerank_token)
    return tokenizer, compressor_tokenizer


def load_tokenizer(name_or_path: str, subfolder: str, hub_kwargs: dict, config: ScaleDownConfig | None = None):
    """`AutoTokenizer` from a saved folder; a fast tokenizer saved by another transformers line (e.g. 5's
    `TokenizersBackend` class name, unknown to 4) loads as a plain `PreTrainedTokenizerFast` from its
    `tokenizer.json`. `None`, with a warning, when neither works. `config`: the folder's configuration, already
    loaded (`AutoTokenizer` would otherwise load it again, through remote code)."""
    from transformers import PreTrainedTokenizerFast

    if config is not None:
        hub_kwargs = {**hub_kwargs, "config": config}
    try:
        return AutoTokenizer.from_pretrained(name_or_path, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError) as error:
        try:
            kwargs = {k: v for k, v in hub_kwargs.items() if k != "config"}
            return PreTrainedTokenizerFast.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
        except (OSError, ValueError):
            where = f"{name_or_path}/{subfolder}" if subfolder else name_or_path
            logger.warning(f"No tokenizer loaded from {where}: {error}")
            return None


class ScaleDownProcessor(ProcessorMixin):
    r"""
    Builds ScaleDown's inputs from text: the compressor rows of every (question, document) pair and the generator's
    prompts with `num_memory_tokens` `<MEM>` placeholders per document (see the module doc). Saved next to the model
    by `ScaleDownForCausalLM.save_pretrained`; `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` loads
    it. `processor(questions, documents)` returns both inputs in one `BatchFeature`, ready for
    `model.generate(**inputs)` after `model.compress`, or for training with `answers`.

    Args:
        tokenizer: the generator's tokenizer, with the memory token.
        compressor_tokenizer: the compressor's tokenizer, with its memory, separator (and relevance) tokens; the
            same object as `tokenizer` for an N-layers compressor.
        config ([`ScaleDownConfig`]): the model's configuration.
    """

    attributes = ["tokenizer", "compressor_tokenizer"]
    tokenizer_class = "AutoTokenizer"
    compressor_tokenizer_class = "AutoTokenizer"

    def __init__(self, tokenizer=None, compressor_tokenizer=None, config: ScaleDownConfig | None = None, **kwargs):
        if tokenizer is None or config is None:
            raise ValueError("`ScaleDownProcessor` needs the generator's `tokenizer` and the model's `config`.")
        self.config = config
        super().__init__(tokenizer, compressor_tokenizer if compressor_tokenizer is not None else tokenizer)

    @classmethod
    def get_attributes(cls):  # transformers 5 infers attributes from `__init__`; `config` is not one
        return list(cls.attributes)

    # ------------------------------------------------------------------ building inputs
    def compressor_inputs(
        self, questions: list[str], documents: list[list[str]], pad_to_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """`compressor_input_ids` and `compressor_attention_mask`, `(num_pairs, length)`: one row per (question,
        document) pair, in order (see [`build_compressor_inputs`])."""
        return build_compressor_inputs(self.compressor_tokenizer, self.config, questions, documents, pad_to_length)

    def generator_inputs(
        self,
        questions: list[str],
        documents: list[list[str]],
        answers: list[str] | None = None,
        raw_documents: bool = False,
        padding_side: str = "left",
        pad_to_length: int | None = None,
        max_answer_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The generator's `input_ids`/`attention_mask` (and `labels` with `answers`): per document
        `num_memory_tokens` `<MEM>` placeholders, or, with `raw_documents`, the document's own tokens (truncated to
        `doc_max_length`: the uncompressed baseline's prompt). See [`build_generator_inputs`]."""
        if raw_documents:
            segments = raw_document_segments(self.tokenizer, self.config, documents)
        else:
            segments = memory_segments(self.config, [len(d) for d in documents])
        return build_generator_inputs(
            self.tokenizer, self.config, questions, segments, answers, padding_side, pad_to_length, max_answer_length
        )

    def __call__(
        self,
        questions: list[str],
        documents: list[list[str]],
        answers: list[str] | None = None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ):
        """Validate and build both inputs of a batch: compressor rows and generator prompts (left-padded for
        generation; with `answers`, right-padded with `labels` for training). Returns a `BatchFeature`."""
        from transformers import BatchFeature

        if return_tensors != "pt":
            raise ValueError(
                f"ScaleDownProcessor returns torch tensors only (`return_tensors='pt'`), got {return_tensors!r}."
            )
        validate_rag_inputs(questions, documents)
        side = padding_side or ("right" if answers is not None else "left")
        data = self.compressor_inputs(questions, documents)
        data.update(self.generator_inputs(questions, documents, answers, padding_side=side, **kwargs))
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        """The generator tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """The generator tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Write both tokenizers (the compressor's in `compressor_tokenizer/` when it is another one) and
        `processor_config.json`, which names this class for `AutoProcessor` (with the processing file copied beside
        it as remote code)."""
        import json
        import shutil

        if push_to_hub:
            raise ValueError("Push the whole model folder instead: `model.push_to_hub(...)` or `scaledown push`.")
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        if self.compressor_tokenizer is not self.tokenizer:
            self.compressor_tokenizer.save_pretrained(os.path.join(save_directory, COMPRESSOR_TOKENIZER_FOLDER))
        module = os.path.splitext(os.path.basename(__file__))[0]
        processor_config = {
            "processor_class": type(self).__name__,
            "auto_map": {"AutoProcessor": f"{module}.{type(self).__name__}"},
        }
        with open(os.path.join(save_directory, PROCESSOR_CONFIG_NAME), "w", encoding="utf-8") as handle:
            handle.write(json.dumps(processor_config, indent=2) + "\n")
        for name in (f"{module}.py", "configuration_scaledown.py"):  # remote code for AutoProcessor
            source = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
            if os.path.isfile(source) and not os.path.isfile(os.path.join(save_directory, name)):
                shutil.copy(source, save_directory)
        return [os.path.join(save_directory, PROCESSOR_CONFIG_NAME)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load the processor of a saved ScaleDown folder (or hub repository): its configuration and tokenizers."""
        hub_kwargs = {k: kwargs[k] for k in TOKENIZER_HUB_KWARGS if k in kwargs}
        subfolder = kwargs.get("subfolder") or ""
        config = kwargs.get("config")
        if getattr(config, "model_type", None) != ScaleDownConfig.model_type:
            config_kwargs = {k: v for k, v in hub_kwargs.items() if k != "trust_remote_code"}  # for Auto classes only
            config = ScaleDownConfig.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder, **config_kwargs
            )
        name = str(pretrained_model_name_or_path)
        tokenizer = load_tokenizer(name, subfolder, hub_kwargs, config)
        if tokenizer is None:
            raise OSError(f"{name} holds no generator tokenizer: is it a folder saved by ScaleDown?")
        compressor_tokenizer = tokenizer
        if config.compressor_type != "n_layers":
            folder = f"{subfolder}/{COMPRESSOR_TOKENIZER_FOLDER}" if subfolder else COMPRESSOR_TOKENIZER_FOLDER
            compressor_tokenizer = load_tokenizer(name, folder, hub_kwargs, config)
            if compressor_tokenizer is None:
                raise OSError(f"{name} holds no compressor tokenizer in {COMPRESSOR_TOKENIZER_FOLDER}/.")
        return cls(tokenizer, compressor_tokenizer, config)
