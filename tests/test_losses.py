import pytest
import torch
import torch.nn.functional as F

from scaledown.training.losses import (
    answer_cross_entropy,
    answer_nll_per_row,
    distillation_kl,
    distillation_loss,
    reranking_mse,
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
