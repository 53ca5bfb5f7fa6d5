"""Data collator: rows -> query-dependent compressor inputs + generator prompts with memory slots + labels."""

import random
from dataclasses import dataclass, field

import torch

from ..configuration_scaledown import ScaleDownConfig
from ..processing_scaledown import (
    _encode,
    build_compressor_inputs,
    build_generator_inputs,
    compressor_parts,
    max_compressor_length,
    memory_segments,
    raw_document_segments,
)


AUTOENCODING, CONTINUATION = "autoencoding", "continuation"
INSTRUCTIONS = {
    AUTOENCODING: "Repeat the background document word for word.",
    CONTINUATION: "Continue the background document with the text that follows it.",
}


def answer_token_mask(
    tokenizer, config: ScaleDownConfig, questions: list[str], documents: list[list[str]], answers: list[list[str]]
) -> list[list[int]]:
    """Per (question, document) pair, question-major as [`build_compressor_inputs`] lays them out, the positions of
    the compressor row's document tokens that overlap the first occurrence (case-insensitive) of the first of the
    question's `answers` found in the document's read part (its first `doc_max_length` tokens); an empty list where
    none occurs. The targets of [`~scaledown.training.losses.slot_selection_loss`] (`memory_slots="span"`)."""
    parts = compressor_parts(tokenizer, config, questions, documents)
    masks = []
    for (prefix, _), docs, row_answers in zip(parts, documents, answers):
        wanted = [a.lower() for a in row_answers or [] if isinstance(a, str) and a.strip()]
        for document in docs:
            encoded = tokenizer(
                document, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True,
                truncation=True, max_length=config.doc_max_length,
            )  # fmt: skip
            offsets = encoded["offset_mapping"]
            read = document[: offsets[-1][1]].lower() if offsets else ""
            at, answer = next(((read.find(a), a) for a in wanted if a in read), (-1, ""))
            if at < 0 or encoded["input_ids"] != _encode(tokenizer, [document], config.doc_max_length)[0]:
                masks.append([])
                continue
            end = at + len(answer)
            masks.append([len(prefix) + i for i, (s, e) in enumerate(offsets) if s < end and e > at])
    return masks


class FromModelMixin:
    """`from_model(model, **kwargs)`: a collator built from a ScaleDown model's tokenizers and configuration."""

    @classmethod
    def from_model(cls, model, **kwargs):
        if model.tokenizer is None or model.compressor_tokenizer is None:
            raise ValueError(
                "The model has no tokenizers: load it with `from_pretrained` or build it with `from_generator`."
            )
        return cls(model.tokenizer, model.compressor_tokenizer, model.config, **kwargs)


@dataclass
class ScaleDownDataCollator(FromModelMixin):
    """Build a training batch from rows with `question`, `documents` and the target answer.

    Args:
        tokenizer: the generator's tokenizer (with the memory token).
        compressor_tokenizer: the compressor's tokenizer (with its memory / separator / relevance tokens).
        config ([`ScaleDownConfig`]): the model's configuration (lengths, token ids, prompt).
        answer_field (`str`): column holding the target answer (`teacher_answer` for distillation). A list value (e.g.
            `gold_answers`) uses its first item.
        scores_field (`str`): column with one teacher relevance score per document, used when reranking is on.
        num_train_documents (`int`, *optional*): keep the top documents of each row (5 in OSCAR's training).
        max_answer_length (`int`): answer tokens kept.
        pad_to_fixed_length (`bool`): pad every tensor to a fixed length (compressor rows: the longest possible row
            under the configuration; prompts: `max_prompt_length`), so that XLA compiles one graph. Needs rows with
            exactly `num_train_documents` documents; check a dataset against it with [`~ScaleDownDataCollator.fit`].
        max_prompt_length (`int`, *optional*): generator prompt + answer length under `pad_to_fixed_length`; set by
            [`~ScaleDownDataCollator.fit`] when left unset.
        raw_document_teacher (`bool`): also build the raw-document teacher's inputs, `teacher_input_ids` and
            `teacher_attention_mask`: the same prompt and answer with the documents as text (each truncated to
            `doc_max_length` tokens), for dense distillation (see `ScaleDownTrainingArguments.kl_weight` and
            `hidden_distillation_weight`).
        autoencoding_mix (`float`): share of rows, drawn at random per batch, that become auto-encoding rows: the
            compressor reads the row's top document with an empty query and the generator, given the auto-encoding
            instruction of `scaledown pretrain`, reconstructs it from the memory alone. Keeps the memory path read
            while the generator learns to answer (README, *Reading the memory*). Rows are otherwise unchanged.
        autoencoding_loss_weight (`float`): weight of an auto-encoding row's label tokens, an answer token weighing 1.
            When not 1 and a batch holds an auto-encoding row, the batch carries `label_weights` `(batch, seq_len)`
            (see [`~scaledown.training.losses.answer_cross_entropy`]).
        answer_document_first (`bool`): move, in each row with `gold_answers`, the first document that contains one
            of them (case-insensitive) to the top, its teacher score with it; rows without such a document keep their
            order. With the top document read (`num_train_documents=1`), every such row then pays for reading the
            memory, instead of the ~1 in 3 rows whose top retrieved chunk lacks the answer teaching the generator to
            ignore it (README, *Reading the memory*).
        seed (`int`): seed of the draw of auto-encoding rows.

    With `config.memory_slots="span"` and rows that carry `gold_answers`, the batch also holds `slot_answer_mask`
    `(num_pairs, compressor_length)`: 1 at the document tokens of each pair's answer span (see [`answer_token_mask`]),
    the target of the span selector.
    """

    tokenizer: object
    compressor_tokenizer: object
    config: ScaleDownConfig
    answer_field: str = "teacher_answer"
    scores_field: str = "teacher_scores"
    num_train_documents: int | None = 5
    max_answer_length: int = 128
    pad_to_fixed_length: bool = False
    max_prompt_length: int | None = None
    raw_document_teacher: bool = False
    autoencoding_mix: float = 0.0
    autoencoding_loss_weight: float = 1.0
    answer_document_first: bool = False
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if self.pad_to_fixed_length and self.num_train_documents is None:
            raise ValueError("`pad_to_fixed_length` needs `num_train_documents`.")
        if not 0.0 <= self.autoencoding_mix <= 1.0:
            raise ValueError(f"`autoencoding_mix` must be in [0, 1], got {self.autoencoding_mix}.")
        if self.autoencoding_loss_weight < 0:
            raise ValueError(f"`autoencoding_loss_weight` must be >= 0, got {self.autoencoding_loss_weight}.")
        if self.autoencoding_mix > 0 and self.pad_to_fixed_length:
            raise ValueError("`autoencoding_mix` changes the number of documents per row: not with fixed shapes.")
        self._rng = random.Random(self.seed)

    def fit(self, rows, multiple: int = 64, batch_size: int = 256) -> "ScaleDownDataCollator":
        """Check, before training starts, that every row fits the fixed shapes (a failure inside an XLA data-loader
        thread would only end the epoch early), and set `max_prompt_length`, when unset, to the longest prompt +
        answer rounded up to `multiple`. `rows`: a `datasets.Dataset` or a list of dicts. No-op without
        `pad_to_fixed_length`."""
        if not self.pad_to_fixed_length:
            return self
        longest = 0
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            if isinstance(batch, dict):  # a datasets slice: columns -> rows
                batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
            for offset, row in enumerate(batch):
                if len(row["documents"]) < self.num_train_documents:
                    raise ValueError(
                        f"Row {start + offset} has {len(row['documents'])} documents; fixed shapes need at least "
                        f"{self.num_train_documents} (`num_train_documents`)."
                    )
            lengths = self._generator_inputs(batch)["attention_mask"].sum(dim=1)
            longest = max(longest, int(lengths.max()))
        if self.max_prompt_length is None:
            self.max_prompt_length = -(-longest // multiple) * multiple
        elif longest > self.max_prompt_length:
            raise ValueError(
                f"The longest prompt + answer has {longest} tokens, more than `max_prompt_length` "
                f"({self.max_prompt_length}): raise it, or leave it unset to fit the data."
            )
        return self

    def _generator_inputs(
        self, rows: list[dict], pad_to_length: int | None = None, raw: bool = False
    ) -> dict[str, torch.Tensor]:
        documents = [list(row["documents"])[: self.num_train_documents] for row in rows]
        if raw:
            segments = raw_document_segments(self.tokenizer, self.config, documents)
        else:
            segments = memory_segments(self.config, [len(d) for d in documents])
        return build_generator_inputs(
            self.tokenizer,
            self.config,
            [INSTRUCTIONS[AUTOENCODING] if row.get(AUTOENCODING) else row["question"] for row in rows],
            segments,
            answers=[self._answer(row, i) for i, row in enumerate(rows)],
            padding_side="right",
            pad_to_length=pad_to_length,
            max_answer_length=self.max_answer_length,
        )

    def _answer(self, row: dict, index: int) -> str:
        if row.get(AUTOENCODING):
            return row["documents"][0]
        if self.answer_field not in row:
            raise ValueError(
                f"Row {index} has no `{self.answer_field}` column: label the data with `scaledown label`, or choose "
                "another `answer_field` (e.g. `gold_answers`)."
            )
        answer = row[self.answer_field]
        if isinstance(answer, (list, tuple)):
            answer = answer[0] if answer else ""
        if not isinstance(answer, str):
            raise ValueError(f"Row {index}: `{self.answer_field}` must be a string, got {type(answer).__name__}.")
        return answer

    def _autoencoding_row(self, row: dict, index: int) -> dict:
        """The row as an auto-encoding row: its top document, cut to the `doc_max_length` compressor tokens that the
        compressor reads, is the target."""
        documents = list(row["documents"])
        if not documents:
            raise ValueError(f"Row {index} has no documents to auto-encode.")
        tokenizer = self.compressor_tokenizer
        encoded = tokenizer(
            documents[0], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=tokenizer.is_fast
        )
        ids, offsets = encoded["input_ids"][: self.config.doc_max_length], encoded.get("offset_mapping")
        text = documents[0][: offsets[len(ids) - 1][1]] if offsets and ids else tokenizer.decode(ids)
        return {"question": "", "documents": [text], AUTOENCODING: True}

    def _answer_document_first(self, row: dict) -> dict:
        """`row` with its first answer-bearing document on top (see `answer_document_first`)."""
        answers = [a.lower() for a in row.get("gold_answers") or [] if isinstance(a, str) and a.strip()]
        documents = list(row["documents"])
        hit = next((i for i, d in enumerate(documents) if any(a in d.lower() for a in answers)), 0)
        if hit == 0:
            return row
        order = [hit] + [i for i in range(len(documents)) if i != hit]
        row = {**row, "documents": [documents[i] for i in order]}
        for name in (self.scores_field, "document_ids", "retrieval_scores"):
            values = row.get(name)
            if isinstance(values, (list, tuple)) and len(values) == len(order):
                row[name] = [values[i] for i in order]
        return row

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        config = self.config
        if self.answer_document_first:
            rows = [self._answer_document_first(row) for row in rows]
        if self.autoencoding_mix > 0:
            rows = [
                self._autoencoding_row(row, i) if self._rng.random() < self.autoencoding_mix else row
                for i, row in enumerate(rows)
            ]
        questions = [row["question"] for row in rows]
        documents = [list(row["documents"])[: self.num_train_documents] for row in rows]
        compressor_length = None
        if self.pad_to_fixed_length:
            if any(len(d) != self.num_train_documents for d in documents):
                raise ValueError(f"Fixed shapes need exactly {self.num_train_documents} documents per row.")
            if self.max_prompt_length is None:
                raise ValueError("`pad_to_fixed_length` needs `max_prompt_length`: set it, or call `fit(dataset)`.")
            compressor_length = max_compressor_length(self.compressor_tokenizer, config)
        batch = build_compressor_inputs(self.compressor_tokenizer, config, questions, documents, compressor_length)
        batch.update(self._generator_inputs(rows, self.max_prompt_length if self.pad_to_fixed_length else None))
        if config.memory_slots == "span" and any(row.get("gold_answers") for row in rows):
            answers = [[] if row.get(AUTOENCODING) else list(row.get("gold_answers") or []) for row in rows]
            positions = answer_token_mask(self.compressor_tokenizer, config, questions, documents, answers)
            mask = torch.zeros_like(batch["compressor_input_ids"], dtype=torch.float32)
            for pair, pair_positions in enumerate(positions):
                mask[pair, pair_positions] = 1.0
            batch["slot_answer_mask"] = mask
        autoencoding = [bool(row.get(AUTOENCODING)) for row in rows]
        if self.autoencoding_loss_weight != 1.0 and any(autoencoding):
            row_weight = torch.tensor([self.autoencoding_loss_weight if a else 1.0 for a in autoencoding])
            batch["label_weights"] = row_weight[:, None].expand_as(batch["labels"]).contiguous()
        if self.raw_document_teacher:
            teacher = self._generator_inputs(rows, raw=True)
            batch["teacher_input_ids"], batch["teacher_attention_mask"] = (
                teacher["input_ids"],
                teacher["attention_mask"],
            )
        if config.enable_reranking and all(self.scores_field in row or row.get(AUTOENCODING) for row in rows):
            scores = []
            for i, (row, docs) in enumerate(zip(rows, documents)):
                if row.get(AUTOENCODING):  # read without its query: no relevance target (NaN, left out of the MSE)
                    scores.append(float("nan"))
                    continue
                row_scores = list(row[self.scores_field])[: len(docs)]
                if len(row_scores) != len(docs):
                    raise ValueError(f"Row {i}: {len(row_scores)} teacher scores for {len(docs)} documents.")
                scores += row_scores
            batch["teacher_scores"] = torch.tensor(scores, dtype=torch.float32)
        return batch
