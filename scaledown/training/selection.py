"""Fit the span selector (`memory_slots="span"`) on answer spans, with the compressor fixed.

The selector is a small head on the compressor's output states: while the compressor does not change, its states can
be computed once per (question, document) pair and the head trained on them for several epochs, at a fraction of the
cost of running the compressor at every step. The demo runs this before question answering; `scaledown train` trains
the selector jointly instead (`ScaleDownTrainingArguments.slot_selection_loss_weight`).
"""

import math
import random

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup
from transformers.utils import logging

from ..modeling_scaledown import _span_positions
from ..processing_scaledown import build_compressor_inputs
from .collator import answer_token_mask
from .losses import slot_selection_loss


logger = logging.get_logger(__name__)


def selector_pairs(rows, answer_field: str = "gold_answers") -> list[tuple[str, str, list[str]]]:
    """`(question, document, answers)` for every row whose documents hold one of its answers (case-insensitive): the
    first such document."""
    pairs = []
    for row in rows:
        answers = [a for a in row.get(answer_field) or [] if isinstance(a, str) and a.strip()]
        document = next((d for d in row["documents"] if any(a.lower() in d.lower() for a in answers)), None)
        if document is not None:
            pairs.append((row["question"], document, answers))
    return pairs


@torch.no_grad()
def _compressor_states(model, pairs, batch_size: int) -> list[dict]:
    """Per pair, the compressor's output states and ids up to its first memory token (kept in float16) and the
    positions of its answer tokens; pairs whose answer lies past the read part of the document are left out."""
    config, tokenizer = model.config, model.compressor_tokenizer
    device = next(model.compressor.parameters()).device
    memory_ids = set(config.compressor_memory_token_ids)
    cached = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="compressor states", leave=False):
        chunk = pairs[start : start + batch_size]
        questions, documents = [q for q, _, _ in chunk], [[d] for _, d, _ in chunk]
        answers = answer_token_mask(tokenizer, config, questions, documents, [a for _, _, a in chunk])
        inputs = build_compressor_inputs(tokenizer, config, questions, documents)
        ids = inputs["compressor_input_ids"]
        hidden = model.compressor(
            input_ids=ids.to(device), attention_mask=inputs["compressor_attention_mask"].to(device), use_cache=False
        ).last_hidden_state
        for row, positions in enumerate(answers):
            if not positions:
                continue
            end = next(i for i, t in enumerate(ids[row].tolist()) if t in memory_ids) + 1  # through <MEM_1>
            cached.append({"hidden": hidden[row, :end].half().cpu(), "ids": ids[row, :end], "answer": positions})
    return cached


def _collate(items: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(item["ids"]) for item in items)
    width = items[0]["hidden"].shape[-1]
    hidden = torch.zeros(len(items), length, width, dtype=torch.float16)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    answer = torch.zeros(len(items), length)
    for row, item in enumerate(items):
        hidden[row, : len(item["ids"])] = item["hidden"]
        ids[row, : len(item["ids"])] = item["ids"]
        answer[row, item["answer"]] = 1.0
    return hidden, ids, answer


def _window_hits(
    scores: torch.Tensor, is_document: torch.Tensor, answer: torch.Tensor, count: int, windows: int = 1
) -> torch.Tensor:
    positions, inside = _span_positions(scores, is_document, count, windows)
    return ((torch.gather(answer, 1, positions) > 0) & inside).any(dim=1).float()


def train_slot_selector(
    model,
    rows,
    answer_field: str = "gold_answers",
    epochs: int = 8,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Train `model.slot_selector` on the answer spans of `rows` (dicts or a `datasets.Dataset` with `question`,
    `documents` and `answer_field`), the compressor fixed: its states are computed once (float16, on the CPU), then
    AdamW with a cosine schedule after a 5 % warm-up minimises [`slot_selection_loss`] for `epochs` epochs.

    Returns:
        `dict`: `questions` (rows read), `pairs` (training pairs with an answer span), `validation_pairs`, `epochs`,
        per-epoch mean `loss`, and `window_hit_rate`: the share of held-out pairs (`validation_fraction` of them, at
        least one) whose selected `num_memory_tokens`-token window holds an answer token, before and after training.
    """
    if model.slot_selector is None:
        raise ValueError('`train_slot_selector` needs a model with `memory_slots="span"`.')
    if epochs < 1 or batch_size < 1 or learning_rate <= 0 or not 0 <= validation_fraction < 1:
        raise ValueError(
            "`epochs` and `batch_size` must be positive, `learning_rate` > 0, `validation_fraction` in [0, 1)."
        )
    rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
    cached = _compressor_states(model, selector_pairs(rows, answer_field), batch_size=16)
    if len(cached) < 2:
        raise ValueError(f"Only {len(cached)} training rows have an answer inside a document: nothing to learn from.")
    random.Random(seed).shuffle(cached)
    held_out = max(1, int(len(cached) * validation_fraction)) if validation_fraction > 0 else 0
    validation, train = cached[:held_out], cached[held_out:]
    selector = model.slot_selector
    device = selector.input_proj.weight.device
    pad_id = model.compressor_tokenizer.pad_token_id or 0
    count, windows = model.config.num_memory_tokens, getattr(model.config, "span_windows", 1)

    def hit_rate() -> float | None:
        if not validation:
            return None
        selector.eval()
        hits = []
        with torch.no_grad():
            for start in range(0, len(validation), 64):
                hidden, ids, answer = _collate(validation[start : start + 64], pad_id)
                scores, is_document = model.score_slots(hidden.to(device), ids.to(device))
                hits.append(_window_hits(scores, is_document, answer.to(device), count, windows))
        return round(float(torch.cat(hits).mean()), 4)

    before = hit_rate()
    optimizer = torch.optim.AdamW(selector.parameters(), lr=learning_rate, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, max(1, steps_per_epoch * epochs // 20), steps_per_epoch * epochs
    )
    generator = torch.Generator().manual_seed(seed)
    losses = []
    selector.train()
    for epoch in tqdm(range(epochs), desc="span selector"):
        total = 0.0
        for index in torch.randperm(len(train), generator=generator).split(batch_size):
            hidden, ids, answer = _collate([train[i] for i in index.tolist()], pad_id)
            scores, _ = model.score_slots(hidden.to(device), ids.to(device))
            loss = slot_selection_loss(scores, answer.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        losses.append(round(total / steps_per_epoch, 4))
        logger.info(f"span selector epoch {epoch + 1}/{epochs}: loss {losses[-1]}")
    after = hit_rate()
    selector.train(model.training)
    optimizer.zero_grad(set_to_none=True)
    return {
        "questions": len(rows),
        "pairs": len(train),
        "validation_pairs": len(validation),
        "epochs": epochs,
        "loss": losses,
        "window_hit_rate": {"before": before, "after": after},
    }
