"""Compressor pretraining (`scaledown pretrain`): align an encoder or small-LLM compressor with the generator.

OSCAR pretrains its encoder and LLM compressors before fine-tuning and gives the N-layers compressor none; here a
short auto-encoding warm-up is what makes the generator read an N-layers memory early (README, *Reading the memory*;
`configs/smollm2-5l-squad-pretrain.yaml`). On plain text, the compressor reads a chunk of `doc_max_length` tokens
(with an empty query) and the generator, reading only its memory embeddings, either reconstructs the chunk
(auto-encoding) or continues the text that follows it (continuation); the two tasks are mixed by
`autoencoding_ratio` (0.5 by default). Training uses the very
[`ScaleDownTrainer`] and distillation loss of fine-tuning (cross-entropy on the target tokens; no reranking term);
only the collator differs: [`PretrainingCollator`].

Data: local text files (`.txt`, blank-line separated passages), SQuAD JSON files (their passages), a `datasets` text
dataset (`hf:NAME[:CONFIG]`, or a folder written by `save_to_disk`, with a `text` column); offline default: the
passages of the shipped SQuAD sample.
"""

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging

from ..configuration_scaledown import ScaleDownConfig
from ..processing_scaledown import (
    build_compressor_inputs,
    build_generator_inputs,
    max_compressor_length,
    memory_segments,
)
from .collator import AUTOENCODING, CONTINUATION, INSTRUCTIONS, FromModelMixin


logger = logging.get_logger(__name__)


def read_texts(sources: list[str], text_column: str = "text", splits: list[str] | None = None) -> list[str]:
    """Passages from `sources`: `.txt` files (split on blank lines), SQuAD `.json` files (their contexts), `hf:NAME`
    / `hf:NAME:CONFIG` hub datasets or `save_to_disk` folders (the `text_column` of every split, or of `splits`; a
    column of lists, such as the `documents` of a `prepare-data` folder, gives each of its texts). Empty ones are
    dropped, duplicates kept once (in order)."""
    from .data import read_squad

    texts = []
    for source in sources:
        path = Path(source)
        if source.startswith("hf:") or path.is_dir():
            import datasets

            if path.is_dir():
                loaded = datasets.load_from_disk(str(path))
            else:
                name, _, config = source[3:].partition(":")
                loaded = datasets.load_dataset(name, config or None)
            if isinstance(loaded, datasets.DatasetDict):
                missing = [name for name in splits or [] if name not in loaded]
                if missing:
                    raise ValueError(f"{source}: no split {missing[0]!r} (has {list(loaded)}).")
                chosen = [loaded[name] for name in splits] if splits else list(loaded.values())
            else:
                chosen = [loaded]
            for split in chosen:
                if text_column not in split.column_names:
                    raise ValueError(f"{source}: no `{text_column}` column (has {split.column_names}).")
                for value in split[text_column]:
                    texts += list(value) if isinstance(value, (list, tuple)) else [value]
        elif path.suffix == ".json":
            texts += [p for record in read_squad(path) for p in record.passages]
        elif path.suffix in (".txt", ".md"):
            if not path.is_file():
                raise FileNotFoundError(f"Pretraining text {path} does not exist.")
            texts += path.read_text(encoding="utf-8").split("\n\n")
        else:
            raise ValueError(f"{source}: expected a .txt/.md file, a SQuAD .json file, a dataset folder or hf:NAME.")
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def make_pretraining_rows(
    texts: list[str],
    tokenizer,
    chunk_length: int,
    continuation_length: int | None = None,
    autoencoding_ratio: float = 0.5,
    seed: int = 0,
) -> list[dict]:
    """Cut every text into consecutive chunks of `chunk_length` tokens of `tokenizer` (the compressor's: a chunk is
    what it reads, `doc_max_length`) and give each a task: auto-encoding with probability `autoencoding_ratio`, else
    continuation, whose target is the next `continuation_length` tokens (default: `chunk_length`); a chunk with
    nothing after it is always auto-encoded. Rows: `{"text", "continuation", "task"}`."""
    if not 0.0 <= autoencoding_ratio <= 1.0:
        raise ValueError(f"`autoencoding_ratio` must be in [0, 1], got {autoencoding_ratio}.")
    if chunk_length < 1:
        raise ValueError(f"`chunk_length` must be >= 1, got {chunk_length}.")
    continuation_length = continuation_length or chunk_length
    rng = random.Random(seed)
    rows = []
    for text in texts:
        encoded = tokenizer(
            text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=tokenizer.is_fast
        )
        ids, offsets = encoded["input_ids"], encoded.get("offset_mapping")
        for start in range(0, len(ids), chunk_length):
            end = min(start + chunk_length, len(ids))
            following = min(end + continuation_length, len(ids))
            task = AUTOENCODING if following == end or rng.random() < autoencoding_ratio else CONTINUATION
            rows.append(
                {
                    "text": _piece(tokenizer, text, ids, offsets, start, end),
                    "continuation": _piece(tokenizer, text, ids, offsets, end, following) if following > end else "",
                    "task": task,
                }
            )
    return rows


def _piece(tokenizer, text: str, ids: list[int], offsets, start: int, end: int) -> str:
    """Tokens `start:end` of `text`: its original characters when the tokenizer maps tokens back to them (no
    lower-casing or re-spacing), else their decoding."""
    if offsets:
        return text[offsets[start][0] : offsets[end - 1][1]]
    return tokenizer.decode(ids[start:end])


@dataclass
class PretrainingCollator(FromModelMixin):
    """Batches of pretraining rows (`text`, `continuation`, `task`, see [`make_pretraining_rows`]) for
    [`ScaleDownTrainer`]: the compressor reads `[start][empty query][<DOC>][text][<MEM_1>..<MEM_l>]([<RR>])`, the
    generator reads the task's instruction with the memory as its one background document, and the labels are the
    target's tokens (the text itself, or its continuation). Same keys as [`ScaleDownDataCollator`], no teacher scores.

    Args:
        tokenizer, compressor_tokenizer, config: as in [`ScaleDownDataCollator`].
        max_answer_length (`int`): target tokens kept.
        pad_to_fixed_length (`bool`), max_prompt_length (`int`, *optional*): fixed shapes for XLA.
    """

    tokenizer: object
    compressor_tokenizer: object
    config: ScaleDownConfig
    max_answer_length: int = 160
    pad_to_fixed_length: bool = False
    max_prompt_length: int | None = None

    @staticmethod
    def target(row: dict) -> str:
        if row.get("task") not in INSTRUCTIONS:
            raise ValueError(f"Pretraining row task must be one of {list(INSTRUCTIONS)}, got {row.get('task')!r}.")
        return row["text"] if row["task"] == AUTOENCODING else row["continuation"]

    def generator_inputs(self, rows: list[dict], with_targets: bool = True, padding_side: str = "right") -> dict:
        targets = [self.target(row) for row in rows]  # checks the tasks
        return build_generator_inputs(
            self.tokenizer,
            self.config,
            [INSTRUCTIONS[row["task"]] for row in rows],
            memory_segments(self.config, [1] * len(rows)),
            answers=targets if with_targets else None,
            padding_side=padding_side,
            pad_to_length=self.max_prompt_length if self.pad_to_fixed_length else None,
            max_answer_length=self.max_answer_length,
        )

    def compressor_inputs(self, rows: list[dict]) -> dict:
        length = max_compressor_length(self.compressor_tokenizer, self.config) if self.pad_to_fixed_length else None
        return build_compressor_inputs(
            self.compressor_tokenizer, self.config, [""] * len(rows), [[row["text"]] for row in rows], length
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.pad_to_fixed_length and self.max_prompt_length is None:
            raise ValueError("`pad_to_fixed_length` needs `max_prompt_length`.")
        return {**self.compressor_inputs(rows), **self.generator_inputs(rows)}


def split_rows(rows: list[dict], held_out: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle and hold out `held_out` rows (among those with a continuation, so both metrics apply)."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    test = [i for i in order if rows[i]["continuation"]][:held_out]
    chosen = set(test)
    return [rows[i] for i in order if i not in chosen], [rows[i] for i in test]


def default_sources() -> list[str]:
    from .data import SAMPLE

    return [os.fspath(SAMPLE)]
