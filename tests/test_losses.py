import pytest
import torch
import torch.nn.functional as F

from scaledown.training.losses import (
    answer_cross_entropy,
    answer_nll_per_row,
    distillation_kl,
    distillation_loss,
    reranking_mse,
    weighted_label_count,
)


def make_batch(seed=0, batch=4, length=7, vocab=11):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[:, :3] = -100  # prompt
    labels[0, -2:] = -100  # padding
    return logits, labels


def test_cross_entropy_matches_the_reference_causal_lm_loss():
    logits, labels = make_batch()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(answer_cross_entropy(logits, labels), expected, atol=1e-6)


def test_gradient_accumulation_with_num_items_equals_the_full_batch_mean():
    """Summed over micro-batches, the num_items-normalised loss is the per-token mean of the whole batch."""
    logits, labels = make_batch()
    full = answer_cross_entropy(logits, labels)
    num_items = labels[:, 1:].ne(-100).sum()
    parts = [answer_cross_entropy(logits[i : i + 1], labels[i : i + 1], num_items) for i in range(4)]
    assert torch.allclose(sum(parts), full, atol=1e-6)
    # The micro-batch means averaged (the naive way) differ when micro-batches hold different token counts.
    naive = sum(answer_cross_entropy(logits[i : i + 1], labels[i : i + 1]) for i in range(4)) / 4
    assert not torch.allclose(naive, full, atol=1e-4)


def test_label_weights_weigh_each_token_and_accumulate_like_the_full_batch():
    """Per-token weights: the loss is `sum(w * nll) / sum(w)`; weights of one give the plain loss; a row weighted 0
    is left out; micro-batches normalised by the accumulated weighted count sum to the full batch's loss."""
    logits, labels = make_batch()
    ones = torch.ones(labels.shape)
    plain = answer_cross_entropy(logits, labels)
    assert torch.allclose(answer_cross_entropy(logits, labels, label_weights=ones), plain)
    weights = torch.tensor([1.0, 0.0, 0.25, 1.0])[:, None].expand_as(labels)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none").reshape(4, 6)
    mask = labels[:, 1:].ne(-100).float()
    expected = (nll * mask * weights[:, 1:]).sum() / (mask * weights[:, 1:]).sum()
    full = answer_cross_entropy(logits, labels, label_weights=weights)
    assert torch.allclose(full, expected, atol=1e-6)
    kept = [0, 2, 3]  # the row weighted 0 changes nothing
    without = answer_cross_entropy(logits[kept], labels[kept], label_weights=weights[kept])
    assert torch.allclose(full, without, atol=1e-6)
    count = weighted_label_count(labels, weights)
    assert torch.allclose(count, (mask * weights[:, 1:]).sum())
    assert weighted_label_count(labels) == mask.sum()
    parts = [
        distillation_loss(
            logits[i : i + 1], labels[i : i + 1], num_items_in_batch=count, label_weights=weights[i : i + 1]
        )
        for i in range(4)
    ]
    assert torch.allclose(sum(loss for loss, _ in parts), full, atol=1e-6)
    # The logged term is each micro-batch's own weighted mean.
    assert torch.allclose(parts[2][1]["ce"], answer_cross_entropy(logits[2:3], labels[2:3]), atol=1e-6)


def test_distillation_loss_is_scaled_for_accumulation_without_num_items():
    logits, labels = make_batch()
    loss, terms = distillation_loss(logits, labels, num_accumulation_steps=4)
    assert torch.allclose(loss, answer_cross_entropy(logits, labels) / 4)
    assert torch.allclose(terms["ce"], answer_cross_entropy(logits, labels))


def test_logged_ce_is_the_micro_batch_mean_under_num_items():
    logits, labels = make_batch()
    loss, terms = distillation_loss(logits[:1], labels[:1], num_items_in_batch=100, num_accumulation_steps=4)
    assert torch.allclose(terms["ce"], answer_cross_entropy(logits[:1], labels[:1]), atol=1e-6)
    assert torch.allclose(loss, answer_cross_entropy(logits[:1], labels[:1], 100))


def test_reranking_term_is_weighted_and_mean_squared():
    logits, labels = make_batch()
    scores, teacher = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    assert torch.allclose(reranking_mse(scores, teacher), torch.tensor(5.0 / 3))
    loss, terms = distillation_loss(logits, labels, scores, teacher, reranking_loss_weight=0.05)
    assert torch.allclose(loss, answer_cross_entropy(logits, labels) + 0.05 * 5.0 / 3)
    assert set(terms) == {"ce", "rerank_mse"}
    loss_off, terms_off = distillation_loss(logits, labels, scores, teacher, reranking_loss_weight=0.0)
    assert "rerank_mse" not in terms_off and torch.allclose(loss_off, answer_cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="differ"):
        reranking_mse(scores, teacher[:2])
    assert reranking_mse(torch.zeros(0), torch.zeros(0)) == 0


def test_kl_is_zero_against_itself_and_positive_otherwise():
    logits, labels = make_batch()
    assert distillation_kl(logits, logits.clone(), labels).abs() < 1e-6
    other, _ = make_batch(seed=1)
    kl = distillation_kl(logits, other, labels, temperature=2.0)
    assert kl > 0
    # Narrower teacher vocabulary: the student's extra (placeholder) columns are ignored.
    assert distillation_kl(logits, logits[..., :9].clone(), labels).abs() < 1e-6
    loss, terms = distillation_loss(logits, labels, teacher_logits=other, kl_weight=0.5, kl_temperature=2.0)
    assert torch.allclose(loss, answer_cross_entropy(logits, labels) + 0.5 * kl)
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(logits, other, labels, temperature=0)


def test_no_label_token_gives_a_zero_loss_not_nan():
    logits, labels = make_batch()
    labels[:] = -100
    assert answer_cross_entropy(logits, labels) == 0


def test_gradients_flow_through_every_term():
    logits, labels = make_batch()
    logits.requires_grad_(True)
    scores = torch.zeros(3, requires_grad=True)
    loss, _ = distillation_loss(logits, labels, scores, torch.ones(3), 0.05, torch.randn(4, 7, 11), 0.5)
    loss.backward()
    assert logits.grad.abs().sum() > 0 and scores.grad.abs().sum() > 0


def test_reranking_mse_over_accumulated_pairs_equals_the_full_batch_mse():
    logits, labels = make_batch()
    scores, teacher = torch.randn(8), torch.randn(8)
    full = reranking_mse(scores, teacher)
    parts = [
        distillation_loss(logits, labels, scores[a:b], teacher[a:b], 1.0, num_items_in_batch=1, num_pairs_in_batch=8)[
            0
        ]
        - answer_cross_entropy(logits, labels, 1)
        for a, b in ((0, 6), (6, 8))
    ]
    assert torch.allclose(sum(parts), full, atol=1e-6)


def test_answer_nll_per_row_is_each_rows_token_mean():
    logits, labels = make_batch()
    expected = [
        F.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100).item() for i in range(labels.shape[0])
    ]
    assert torch.allclose(answer_nll_per_row(logits, labels), torch.tensor(expected), atol=1e-6)
    labels[2, :] = -100
    with pytest.raises(ValueError, match="Rows \\[2\\] have no answer token"):
        answer_nll_per_row(logits, labels)


def test_aligned_suffix_positions_pair_the_shared_ending_whatever_the_padding():
    from scaledown.training.losses import aligned_suffix_positions

    # Row 0: student [5 9 9 | 1 2 3], teacher [5 7 7 7 7 | 1 2 3]: the shared ending is 1 2 3 (the placeholder 9 and
    # the document token 7 differ). Row 1 has a shared ending of one token. Student right-padded, teacher left-padded.
    student = torch.tensor([[5, 9, 9, 1, 2, 3], [5, 9, 4, 0, 0, 0]])
    student_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    teacher = torch.tensor([[5, 7, 7, 7, 7, 1, 2, 3], [0, 0, 0, 0, 5, 7, 7, 4]])
    teacher_mask = torch.tensor([[1] * 8, [0, 0, 0, 0, 1, 1, 1, 1]])
    s_index, t_index, valid = aligned_suffix_positions(student, student_mask, teacher, teacher_mask)
    assert s_index.tolist() == [[3, 4, 5], [2, 0, 0]]
    assert t_index.tolist() == [[5, 6, 7], [7, 0, 0]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    for row in range(2):
        paired = valid[row]
        assert torch.equal(student[row, s_index[row][paired]], teacher[row, t_index[row][paired]])


def test_hidden_state_alignment_is_zero_for_equal_states_and_pulls_towards_the_teacher():
    from scaledown.training.losses import hidden_state_alignment

    generator = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 6, 8, generator=generator) for _ in range(3)]
    index = torch.tensor([[1, 2, 3], [0, 1, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert float(hidden_state_alignment(teacher, teacher, index, index, valid)) == pytest.approx(0.0, abs=1e-6)
    # Scaling does not count (cosine), a different direction does; positions outside `valid` do not count either.
    assert float(hidden_state_alignment([3 * t for t in teacher], teacher, index, index, valid)) < 1e-6
    other = [torch.randn(2, 6, 8, generator=generator, requires_grad=True) for _ in range(3)]
    loss = hidden_state_alignment(other, teacher, index, index, valid)
    assert 0.5 < float(loss.detach()) < 1.5
    loss.backward()
    assert other[0].grad[1, 2].abs().sum() == 0 and other[0].grad[0, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="layers"):
        hidden_state_alignment(other[:2], teacher, index, index, valid)


def test_aligned_kl_equals_the_plain_kl_on_equal_prompts_and_ignores_the_document_block():
    from scaledown.training.losses import aligned_distillation_kl, aligned_suffix_positions

    logits, labels = make_batch()
    teacher = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    ids = torch.where(labels.eq(-100), 1, labels)
    mask = torch.ones_like(ids)
    positions = aligned_suffix_positions(ids, mask, ids, mask)
    assert torch.allclose(
        aligned_distillation_kl(logits, teacher, labels, *positions), distillation_kl(logits, teacher, labels)
    )
    # A teacher that read a longer (raw) document block before the same ending gives the same term.
    block = torch.randn(4, 5, 11)
    longer_ids = torch.cat([torch.full((4, 5), 7), ids], dim=1)
    positions = aligned_suffix_positions(ids, mask, longer_ids, torch.ones_like(longer_ids))
    longer = torch.cat([block, teacher], dim=1)
    assert torch.allclose(
        aligned_distillation_kl(logits, longer, labels, *positions), distillation_kl(logits, teacher, labels)
    )


def test_distillation_loss_adds_the_hidden_term_only_with_positions():
    logits, labels = make_batch()
    hidden = [torch.randn(4, 7, 5)]
    other = [torch.randn(4, 7, 5)]
    index = torch.arange(7).expand(4, 7)
    positions = (index, index, torch.ones(4, 7, dtype=torch.bool))
    base, _ = distillation_loss(logits, labels)
    loss, terms = distillation_loss(
        logits, labels, teacher_positions=positions, student_hidden=hidden, teacher_hidden=other, hidden_weight=2.0
    )
    assert torch.allclose(loss, base + 2.0 * terms["hidden"])
    with pytest.raises(ValueError, match="teacher_positions"):
        distillation_loss(logits, labels, student_hidden=hidden, teacher_hidden=other, hidden_weight=1.0)


def test_reranking_mse_leaves_out_pairs_without_a_target():
    from scaledown.training.losses import reranking_mse

    scores = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    teacher = torch.tensor([0.0, float("nan"), 1.0])
    loss = reranking_mse(scores, teacher)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert scores.grad[1] == 0 and scores.grad[0] != 0
    nothing = reranking_mse(scores, torch.full((3,), float("nan")))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_first_needed_logit_is_one_before_the_earliest_label():
    from scaledown.training.losses import first_needed_logit

    labels = torch.full((3, 9), -100)
    assert first_needed_logit(labels) == 0  # no label: keep everything
    labels[0, 6:8] = 5
    labels[1, 4:6] = 7
    assert first_needed_logit(labels) == 3
    labels[2, 0] = 1
    assert first_needed_logit(labels) == 0
