"""The distillation loss terms, as pure functions (no trainer state), shared by every ScaleDown trainer.

OSCAR trains with sentence-level distillation: cross-entropy on the answer a teacher LLM wrote from the raw
documents, plus `reranking_loss_weight` x MSE between the model's relevance score and a teacher reranker's. An optional
token-level KL to teacher logits is supported when those are supplied.

Dense distillation from the raw-document teacher (the base generator reading the documents as text, the prompt
otherwise identical): the compressed and the raw prompt share their ending (question, answer) token for token, so
their positions can be paired ([`aligned_suffix_positions`]) and the student's hidden states
([`hidden_state_alignment`]) and answer logits ([`distillation_kl`] on the paired positions) pulled towards the
teacher's: a signal at every layer and position, where the answer's cross-entropy gives a few bits per example.

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


def first_needed_logit(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """The first position whose logits the next-token cross-entropy on `labels` `(batch_size, seq_len)` reads: one
    before the earliest label token of any row (0 when there is none). Positions before it only feed the LM head for
    nothing: `logits_to_keep=seq_len - start` and `labels[:, start:]` give the same loss (the prompt of a compressed
    row is ~100 tokens, its answer ~5, and the head projects onto the whole vocabulary)."""
    has_label = labels.ne(ignore_index).any(dim=0)
    if not bool(has_label.any()):
        return 0
    return max(int(has_label.int().argmax()) - 1, 0)


def answer_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens, optionally weighted per token.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, seq_len, vocab_size)`): generator logits.
        labels (`torch.Tensor` of shape `(batch_size, seq_len)`): input ids of the answer tokens, `ignore_index`
            elsewhere (prompt, memory slots, padding). Shifted here.
        num_items_in_batch: label tokens (after the shift) of the whole accumulated batch, their weights summed when
            `label_weights` are given; `None` -> micro-batch (weighted) mean.
        label_weights (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*): weight of each label token,
            aligned with `labels` (e.g. auto-encoding rows below 1, see `autoencoding_loss_weight` of the arguments).

    Returns:
        Scalar loss (0 when no label token is present): `sum(weight * nll) / sum(weight)` over the label tokens.
    """
    logits, labels = shift_for_next_token(logits, labels)
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    if label_weights is None:
        total = losses.sum()
    else:
        total = (losses * label_weights[:, 1:].reshape(-1).to(losses.device, losses.dtype)).sum()
    return total / _denominator(labels, num_items_in_batch, ignore_index, total, label_weights)


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
    """Mean squared error between relevance scores `(num_pairs,)` and the teacher's `(num_pairs,)`, over the pairs
    whose teacher score is not NaN (a pair without a target, e.g. an auto-encoding row's); 0 with no such pair."""
    if scores.shape != teacher_scores.shape:
        raise ValueError(
            f"Relevance scores {tuple(scores.shape)} and teacher scores {tuple(teacher_scores.shape)} differ."
        )
    teacher_scores = teacher_scores.to(scores.device).float()
    scored = ~torch.isnan(teacher_scores)  # static shapes (no boolean indexing): one graph on XLA
    squared = torch.where(scored, scores.float() - torch.nan_to_num(teacher_scores), 0.0).pow(2)
    return squared.sum() / scored.sum().clamp(min=1)


def slot_selection_loss(slot_scores: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Negative log-probability of the answer span under the span selector (`memory_slots="span"`), averaged over the
    (query, document) pairs whose document holds an answer: for each such pair `logsumexp(scores) -
    logsumexp(scores[answer tokens])`, the softmax running over the pair's document tokens (`slot_scores` is `-inf`
    elsewhere). 0 when no pair holds an answer.

    Args:
        slot_scores (`torch.Tensor` of shape `(num_pairs, length)`): the selector's scores (see
            `ScaleDownCompressorOutput.slot_scores`).
        answer_mask (`torch.Tensor` of shape `(num_pairs, length)`): 1 at the answer's document tokens, else 0.
    """
    if slot_scores.shape != answer_mask.shape:
        raise ValueError(f"Slot scores {tuple(slot_scores.shape)} and answer mask {tuple(answer_mask.shape)} differ.")
    scores = slot_scores.float()
    answer = answer_mask.to(scores.device) > 0
    has_answer = answer.any(dim=1)  # static shapes (no boolean indexing): one graph on XLA
    total = torch.logsumexp(scores, dim=1)
    on_answer = torch.logsumexp(scores.masked_fill(~answer, float("-inf")), dim=1)
    losses = torch.where(has_answer, total - torch.where(has_answer, on_answer, 0.0), 0.0)
    return losses.sum() / has_answer.sum().clamp(min=1)


def span_window_loss(slot_scores: torch.Tensor, answer_mask: torch.Tensor, window_size: int) -> torch.Tensor:
    """Negative log-probability that the span selector's chosen window holds an answer token: the objective of the
    hard choice itself, where [`slot_selection_loss`] asks for mass on every answer token. A window is
    `window_size` consecutive document tokens that fit in the document (a document shorter than that: its first
    token's window), as `memory_slots="span"` chooses them; its log-probability is the log of its softmax mass,
    normalised over the row's windows, so `logsumexp(windows) - logsumexp(windows holding an answer token)`,
    averaged over the pairs whose document holds an answer. 0 when none does.

    Args:
        slot_scores (`torch.Tensor` of shape `(num_pairs, length)`): the selector's scores, `-inf` outside the
            document tokens (see `ScaleDownCompressorOutput.slot_scores`).
        answer_mask (`torch.Tensor` of shape `(num_pairs, length)`): 1 at the answer's document tokens, else 0.
        window_size (`int`): tokens per window (`num_memory_tokens // span_windows`).
    """
    if slot_scores.shape != answer_mask.shape:
        raise ValueError(f"Slot scores {tuple(slot_scores.shape)} and answer mask {tuple(answer_mask.shape)} differ.")
    if window_size < 1:
        raise ValueError(f"`window_size` must be positive, got {window_size}.")
    scores = slot_scores.float()
    is_document = torch.isfinite(scores)
    # finite outside the document, so that no gradient meets inf - inf; those windows are masked below
    log_probs = torch.where(is_document, torch.log_softmax(scores, dim=-1), -1e4)
    windows = F.pad(log_probs, (0, window_size - 1), value=-1e4).unfold(1, window_size, 1)  # (pairs, length, size)
    log_mass = torch.logsumexp(windows, dim=-1)
    index = is_document.long().cumsum(1) - 1
    valid = is_document & ((index + window_size <= is_document.sum(1, keepdim=True)) | (index == 0))
    answer = F.pad(answer_mask.to(scores.device) > 0, (0, window_size - 1)).unfold(1, window_size, 1).any(-1)
    answer = answer & valid
    has_answer = answer.any(dim=1)
    total = torch.logsumexp(log_mass.masked_fill(~valid, -1e4), dim=1)
    on_answer = torch.logsumexp(log_mass.masked_fill(~answer, -1e4), dim=1)
    losses = torch.where(has_answer, total - on_answer, 0.0)
    return losses.sum() / has_answer.sum().clamp(min=1)


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
    teacher_positions: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None,
    student_hidden: list[torch.Tensor] | None = None,
    teacher_hidden: list[torch.Tensor] | None = None,
    hidden_weight: float = 0.0,
    label_weights: torch.Tensor | None = None,
    slot_scores: torch.Tensor | None = None,
    slot_answer_mask: torch.Tensor | None = None,
    slot_selection_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """OSCAR's objective `CE(answer) + reranking_loss_weight * MSE(scores) (+ kl_weight * KL)`, plus, with a
    raw-document teacher, `hidden_weight * (1 - cos)` between paired hidden states.

    The returned loss is already scaled for gradient accumulation over `num_accumulation_steps` micro-batches: token
    terms are divided by `num_items_in_batch` when given (see the module doc), else they are micro-batch means divided
    by `num_accumulation_steps`; likewise the squared errors are divided by `num_pairs_in_batch` (the (query,
    document) pairs of the accumulated batch) when given, else averaged per micro-batch and divided by
    `num_accumulation_steps`. The hidden-state term is a micro-batch mean divided by `num_accumulation_steps`.

    Args:
        teacher_positions (`tuple`, *optional*): `(student_index, teacher_index, valid)` from
            [`aligned_suffix_positions`] when the teacher read another prompt (the raw documents); the KL then pairs
            positions instead of assuming equal shapes (`teacher_index=None`: `teacher_logits` are already gathered,
            `(batch, k, vocab)`).
        student_hidden, teacher_hidden (`list[torch.Tensor]`, *optional*): per aligned layer `(batch, length,
            hidden)`, paired through `teacher_positions` (see [`hidden_state_alignment`]).
        label_weights (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*): per-token weights of the
            cross-entropy (see [`answer_cross_entropy`]); `num_items_in_batch` is then the weighted count
            ([`weighted_label_count`] summed over the accumulated batch).
        slot_scores, slot_answer_mask (`torch.Tensor` of shape `(num_pairs, length)`, *optional*): the span
            selector's scores and its targets; with `slot_selection_weight > 0` the loss adds
            `slot_selection_weight *` [`slot_selection_loss`] (a micro-batch mean divided by `num_accumulation_steps`).

    Returns:
        `(loss, terms)`: the scalar to back-propagate and, detached, the micro-batch means of the unweighted terms
        (`ce`, and `rerank_mse` / `kl` / `hidden` / `slot_selection` when active) for logging.
    """
    steps = max(int(num_accumulation_steps), 1)
    scale = 1.0 if num_items_in_batch is not None else 1.0 / steps
    ce = answer_cross_entropy(logits, labels, num_items_in_batch, label_weights=label_weights)
    loss = ce * scale
    ce_mean = ce.detach()
    if num_items_in_batch is not None:  # back to this micro-batch's (weighted) per-token mean, for logging
        ce_mean = ce_mean * _denominator(labels[:, 1:], num_items_in_batch, IGNORE_INDEX, ce_mean)
        ce_mean = ce_mean / _denominator(labels[:, 1:], None, IGNORE_INDEX, ce_mean, label_weights)
    terms = {"ce": ce_mean}
    if rerank_scores is not None and teacher_scores is not None and reranking_loss_weight > 0:
        mse = reranking_mse(rerank_scores, teacher_scores)
        if num_pairs_in_batch is not None:
            pairs = torch.as_tensor(num_pairs_in_batch).to(mse.device, mse.dtype).clamp(min=1)
            scaled = mse * (~torch.isnan(teacher_scores)).sum() / pairs
        else:
            scaled = mse / steps
        loss = loss + reranking_loss_weight * scaled
        terms["rerank_mse"] = mse.detach()
    if teacher_logits is not None and kl_weight > 0:
        if teacher_positions is None:
            kl = distillation_kl(logits, teacher_logits, labels, kl_temperature, num_items_in_batch)
        else:
            kl = aligned_distillation_kl(
                logits, teacher_logits, labels, *teacher_positions, kl_temperature, num_items_in_batch
            )
        loss = loss + kl_weight * kl * scale
        terms["kl"] = kl.detach()
    if student_hidden is not None and teacher_hidden is not None and hidden_weight > 0:
        if teacher_positions is None:
            raise ValueError("The hidden-state term needs `teacher_positions` (see `aligned_suffix_positions`).")
        student_index, teacher_index, valid = teacher_positions
        hidden = hidden_state_alignment(student_hidden, teacher_hidden, student_index, teacher_index, valid)
        loss = loss + hidden_weight * hidden / steps
        terms["hidden"] = hidden.detach()
    if slot_scores is not None and slot_answer_mask is not None and slot_selection_weight > 0:
        selection = slot_selection_loss(slot_scores, slot_answer_mask)
        loss = loss + slot_selection_weight * selection / steps
        terms["slot_selection"] = selection.detach()
    return loss, terms


def aligned_suffix_positions(
    student_ids: torch.Tensor, student_mask: torch.Tensor, teacher_ids: torch.Tensor, teacher_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair the positions of the longest common ending of each row's real tokens in two batches of sequences.

    The compressed prompt and the raw-document prompt of a question differ only in the document block; what follows
    it (question, chat markup, answer) is the same tokens. Padding may sit on either side.

    Args:
        student_ids, student_mask (`torch.Tensor` of shape `(batch_size, student_len)`): ids and attention mask.
        teacher_ids, teacher_mask (`torch.Tensor` of shape `(batch_size, teacher_len)`): the same for the teacher.

    Returns:
        `(student_index, teacher_index, valid)`, each `(batch_size, suffix_len)` with `suffix_len` the longest common
        ending in the batch: the positions of the k-th token of each row's common ending (left-aligned, in order) in
        either batch, and whether that slot exists for the row (indices of missing slots are 0).
    """
    if student_ids.shape[0] != teacher_ids.shape[0]:
        raise ValueError(f"Student batch {student_ids.shape[0]} and teacher batch {teacher_ids.shape[0]} differ.")
    pairs = []
    for s_ids, s_mask, t_ids, t_mask in zip(
        student_ids.cpu(), student_mask.cpu(), teacher_ids.cpu(), teacher_mask.cpu()
    ):
        s_pos, t_pos = s_mask.nonzero().flatten(), t_mask.nonzero().flatten()
        s_tok, t_tok = s_ids[s_pos], t_ids[t_pos]
        n = min(len(s_tok), len(t_tok))
        equal = (s_tok[len(s_tok) - n :] == t_tok[len(t_tok) - n :]).flip(0)
        common = int(equal.long().cumprod(0).sum())
        pairs.append((s_pos[len(s_pos) - common :], t_pos[len(t_pos) - common :]))
    length = max((len(s) for s, _ in pairs), default=0)
    student_index = torch.zeros(len(pairs), length, dtype=torch.long)
    teacher_index = torch.zeros_like(student_index)
    valid = torch.zeros(len(pairs), length, dtype=torch.bool)
    for row, (s, t) in enumerate(pairs):
        student_index[row, : len(s)], teacher_index[row, : len(t)], valid[row, : len(s)] = s, t, True
    return student_index.to(student_ids.device), teacher_index.to(student_ids.device), valid.to(student_ids.device)


def gather_positions(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`values[b, index[b, k]]` for `values` `(batch, length, ...)` and `index` `(batch, k)`."""
    index = index.to(values.device)
    shape = index.shape + values.shape[2:]
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(shape)
    return torch.gather(values, 1, expanded)


def hidden_state_alignment(
    student_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    student_index: torch.Tensor,
    teacher_index: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Mean cosine distance `1 - cos(student, teacher)` between paired hidden states, over layers and positions.

    Cosine rather than squared error: the residual stream's norm grows with depth and a few massive-activation
    dimensions would dominate an unnormalised error.

    Args:
        student_hidden, teacher_hidden: one tensor `(batch_size, length, hidden_size)` per aligned layer (the same
            number of layers on both sides; lengths may differ).
        student_index, teacher_index, valid (`torch.Tensor` of shape `(batch_size, k)`): paired positions (see
            [`aligned_suffix_positions`]).

    Returns:
        Scalar loss in [0, 2]; 0 when there is no valid pair or no layer.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"{len(student_hidden)} student layers against {len(teacher_hidden)} teacher layers.")
    mask = valid.to(student_hidden[0].device if student_hidden else valid.device)
    if not student_hidden or not bool(mask.any()):
        return (student_hidden[0].sum() * 0.0) if student_hidden else torch.zeros(())
    total = 0.0
    for student, teacher in zip(student_hidden, teacher_hidden):
        s = gather_positions(student, student_index)[mask].float()
        t = gather_positions(teacher, teacher_index)[mask].to(s.device).float()
        total = total + (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    return total / len(student_hidden)


def aligned_distillation_kl(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_index: torch.Tensor,
    teacher_index: torch.Tensor,
    valid: torch.Tensor,
    temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """[`distillation_kl`] on paired positions: the student's logits `(batch, student_len, vocab)` and labels at
    `student_index`, the teacher's logits at `teacher_index` (`teacher_logits` may already be gathered: `(batch, k,
    vocab)` with `teacher_index=None`)."""
    student = gather_positions(logits, student_index)
    teacher = teacher_logits if teacher_index is None else gather_positions(teacher_logits, teacher_index)
    targets = torch.where(valid.to(labels.device), gather_positions(labels, student_index), IGNORE_INDEX)
    return distillation_kl(student, teacher, targets, temperature, num_items_in_batch)


def weighted_label_count(
    labels: torch.Tensor, label_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The label tokens of `labels` `(batch_size, seq_len)` after the next-token shift, each counting its weight in
    `label_weights` (same shape) when given: the normaliser of [`answer_cross_entropy`]."""
    return _count(labels[:, 1:], label_weights, ignore_index)


def _count(shifted_labels, label_weights, ignore_index) -> torch.Tensor:
    """Label tokens of already shifted labels, weighted by `label_weights` (not shifted) when given."""
    mask = shifted_labels.ne(ignore_index)
    if label_weights is None:
        return mask.sum()
    return (label_weights[:, 1:].to(mask.device).float() * mask).sum()


def _denominator(labels, num_items_in_batch, ignore_index, like: torch.Tensor, label_weights=None) -> torch.Tensor:
    """`labels` already shifted (`label_weights` not)."""
    if num_items_in_batch is None:
        count = _count(labels, label_weights, ignore_index)
    else:
        count = torch.as_tensor(num_items_in_batch)
    return count.to(like.device, like.dtype).clamp(min=1)
