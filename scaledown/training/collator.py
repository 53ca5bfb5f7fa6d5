"""Data collator: rows -> query-dependent compressor inputs + generator prompts with memory slots + labels."""

from dataclasses import dataclass

import torch

from ..configuration_scaledown import ScaleDownConfig
from ..modeling_scaledown import build_compressor_inputs, build_generator_inputs, max_compressor_length


@dataclass
class ScaleDownDataCollator:
    """Build a training batch from rows with `question`, `documents` and the target answer.

    Args:
        tokenizer: the generator's tokenizer (with the memory token).
        compressor_tokenizer: the compressor's tokenizer (with its memory / separator / relevance tokens).
        config ([`ScaleDownConfig`]): the model's configuration (lengths, token ids, prompt).
        answer_field (`str`): column holding the target answer (`teacher_answer` for distillation). A list value (e.g.
            `gold_answers`) uses its first item.
        scores_field (`str`): column with one teacher relevance score per document, used when reranking is on.
        max_documents (`int`, *optional*): keep the top documents of each row (5 in OSCAR's training).
        max_answer_length (`int`): answer tokens kept.
        pad_to_fixed_length (`bool`): pad every tensor to a length that depends on the configuration only, so that
            XLA compiles one graph. Needs `max_prompt_length` and rows with exactly `max_documents` documents.
        max_prompt_length (`int`, *optional*): generator prompt + answer length under `pad_to_fixed_length`.
    """

    tokenizer: object
    compressor_tokenizer: object
    config: ScaleDownConfig
    answer_field: str = "teacher_answer"
    scores_field: str = "teacher_scores"
    max_documents: int | None = 5
    max_answer_length: int = 128
    pad_to_fixed_length: bool = False
    max_prompt_length: int | None = None

    @classmethod
    def from_model(cls, model, **kwargs) -> "ScaleDownDataCollator":
        if model.tokenizer is None or model.compressor_tokenizer is None:
            raise ValueError(
                "The model has no tokenizers: load it with `from_pretrained` or build it with `from_generator`."
            )
        return cls(model.tokenizer, model.compressor_tokenizer, model.config, **kwargs)

    def __post_init__(self):
        if self.pad_to_fixed_length and (self.max_prompt_length is None or self.max_documents is None):
            raise ValueError("`pad_to_fixed_length` needs `max_prompt_length` and `max_documents`.")

    def _answer(self, row: dict, index: int) -> str:
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

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        config = self.config
        questions = [row["question"] for row in rows]
        documents = [list(row["documents"])[: self.max_documents] for row in rows]
        answers = [self._answer(row, i) for i, row in enumerate(rows)]
        if self.pad_to_fixed_length and any(len(d) != self.max_documents for d in documents):
            raise ValueError(f"Fixed shapes need exactly {self.max_documents} documents per row.")

        compressor_length = None
        if self.pad_to_fixed_length:
            compressor_length = max_compressor_length(self.compressor_tokenizer, config)
        batch = build_compressor_inputs(self.compressor_tokenizer, config, questions, documents, compressor_length)
        placeholders = [config.memory_token_id] * config.num_memory_tokens
        batch.update(
            build_generator_inputs(
                self.tokenizer,
                config,
                questions,
                [[placeholders] * len(d) for d in documents],
                answers=answers,
                padding_side="right",
                pad_to_length=self.max_prompt_length if self.pad_to_fixed_length else None,
                max_answer_length=self.max_answer_length,
            )
        )
        if config.enable_reranking and all(self.scores_field in row for row in rows):
            scores = []
            for i, (row, docs) in enumerate(zip(rows, documents)):
                row_scores = list(row[self.scores_field])[: len(docs)]
                if len(row_scores) != len(docs):
                    raise ValueError(f"Row {i}: {len(row_scores)} teacher scores for {len(docs)} documents.")
                scores += row_scores
            batch["teacher_scores"] = torch.tensor(scores, dtype=torch.float32)
        return batch
