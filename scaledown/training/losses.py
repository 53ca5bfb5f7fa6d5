"""The distillation loss terms, as pure functions (no trainer state), shared by every ScaleDown trainer.

OSCAR trains with sentence-level distillation: cross-entropy on the answer a teacher LLM wrote from the raw
documents, plus `reranking_loss_weight` x MSE between the model's relevance score and a teacher reranker's. An optional
token-level KL to teacher logits is supported when those are supplied.

Normalisation under gradient accumulation: token terms are *summed* and divided by `num_items_in_batch`, the number of
label tokens of the whole accumulated (and, under DDP, gathered) batch, so that the accumulated gradient equals the
gradient of the per-token mean over that batch. Without `num_items_in_batch` they are per-token means of the
micro-batch.
"""

import torch
import torch.nn.functional as F


IGNORE_INDEX = -100


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1: returns `(logits[:, :-1], labels[:, 1:])`."""
    return logits[:, :-1, :], labels[:, 1:]


def answer_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, seq_len, vocab_size)`): generator logits.
        labels (`torch.Tensor` of shape `(batch_size, seq_len)`): input ids of the answer tokens, `ignore_index`
            elsewhere (prompt, memory slots, padding). Shifted here.
        num_items_in_batch: label tokens (after the shift) of the whole accumulated batch; `None` -> micro-batch mean.

    Returns:
        Scalar loss (0 when no label token is present).
    """
    logits, labels = shift_for_next_token(logits, labels)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    return total / _denominator(labels, num_items_in_batch, ignore_index, total)


def answer_nll_per_row(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token negative log-likelihood (nats per token) of each row's answer tokens, for scoring.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, seq_len, vocab_size)`): generator logits.
        labels (`torch.Tensor` of shape `(batch_size, seq_len)`): answer token ids, `ignore_index` elsewhere. Shifted
            here.

    Returns:
        `torch.Tensor` of shape `(batch_size,)`, float32. A row without any label token raises a `ValueError`.
    """
    logits, labels = shift_for_next_token(logits, labels)
    counts = labels.ne(ignore_index).sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError(f"Rows {counts.eq(0).nonzero().flatten().tolist()} have no answer token to score.")
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).reshape(labels.shape)
    return losses.sum(dim=1) / counts


def reranking_mse(scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """Mean squared error between relevance scores `(num_pairs,)` and the teacher's `(num_pairs,)`; 0 with no pair."""
    if scores.shape != teacher_scores.shape:
        raise ValueError(
            f"Relevance scores {tuple(scores.shape)} and teacher scores {tuple(teacher_scores.shape)} differ."
        )
    if scores.numel() == 0:
        return scores.sum() * 0.0
    return F.mse_loss(scores.float(), teacher_scores.to(scores.device).float(), reduction="mean")


def distillation_kl(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Token-level KL(teacher || student) on the answer tokens, scaled by `temperature**2` (Hinton et al.).

    `teacher_logits` has the student's shape `(batch_size, seq_len, vocab)`, aligned on the same answer positions (it
    may be narrower in vocabulary: the student's extra placeholder tokens are dropped).
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be positive, got {temperature}.")
    logits, shifted = shift_for_next_token(logits, labels)
    teacher_logits = teacher_logits[:, :-1, :]
    vocab = teacher_logits.shape[-1]
    mask = shifted.ne(ignore_index)
    student = F.log_softmax(logits[..., :vocab][mask].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[mask].to(student.device).float() / temperature, dim=-1)
    total = F.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2
    return total / _denominator(shifted, num_items_in_batch, ignore_index, total)


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    rerank_scores: torch.Tensor | None = None,
    teacher_scores: torch.Tensor | None = None,
    reranking_loss_weight: float = 0.05,
    teacher_logits: torch.Tensor | None = None,
    kl_weight: float = 0.0,
    kl_temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_accumulation_steps: int = 1,
    num_pairs_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """OSCAR's objective: `CE(answer) + reranking_loss_weight * MSE(scores) (+ kl_weight * KL)`.

    The returned loss is already scaled for gradient accumulation over `num_accumulation_steps` micro-batches: token
    terms are divided by `num_items_in_batch` when given (see the module doc), else they are micro-batch means divided
    by `num_accumulation_steps`; likewise the squared errors are divided by `num_pairs_in_batch` (the (query,
    document) pairs of the accumulated batch) when given, else averaged per micro-batch and divided by
    `num_accumulation_steps`.

    Returns:
        `(loss, terms)`: the scalar to back-propagate and, detached, the micro-batch means of the unweighted terms
        (`ce`, and `rerank_mse` / `kl` when active) for logging.
    """
    steps = max(int(num_accumulation_steps), 1)
    scale = 1.0 if num_items_in_batch is not None else 1.0 / steps
    ce = answer_cross_entropy(logits, labels, num_items_in_batch)
    loss = ce * scale
    ce_mean = ce.detach()
    if num_items_in_batch is not None:  # back to this micro-batch's per-token mean, for logging
        ce_mean = ce_mean * _denominator(labels[:, 1:], num_items_in_batch, IGNORE_INDEX, ce_mean)
        ce_mean = ce_mean / _denominator(labels[:, 1:], None, IGNORE_INDEX, ce_mean)
    terms = {"ce": ce_mean}
    if rerank_scores is not None and teacher_scores is not None and reranking_loss_weight > 0:
        mse = reranking_mse(rerank_scores, teacher_scores)
        if num_pairs_in_batch is not None:
            pairs = torch.as_tensor(num_pairs_in_batch).to(mse.device, mse.dtype).clamp(min=1)
            scaled = mse * rerank_scores.numel() / pairs
        else:
            scaled = mse / steps
        loss = loss + reranking_loss_weight * scaled
        terms["rerank_mse"] = mse.detach()
    if teacher_logits is not None and kl_weight > 0:
        kl = distillation_kl(logits, teacher_logits, labels, kl_temperature, num_items_in_batch)
        loss = loss + kl_weight * kl * scale
        terms["kl"] = kl.detach()
    return loss, terms


def _denominator(labels, num_items_in_batch, ignore_index, like: torch.Tensor) -> torch.Tensor:
    if num_items_in_batch is None:
        count = labels.ne(ignore_index).sum()
    else:
        count = torch.as_tensor(num_items_in_batch)
    return count.to(like.device, like.dtype).clamp(min=1)
