"""`memory_slots="span"`: a learned selector picks, per document, the consecutive tokens whose compressor states become
the memory (README, *Reading the memory*)."""

import math

import pytest
import torch
from tiny_models import make_scaledown

from scaledown import ScaleDownConfig, ScaleDownForCausalLM
from scaledown.modeling_scaledown import _span_positions, lexical_prior
from scaledown.training import ScaleDownDataCollator, ScaleDownTrainer, ScaleDownTrainingArguments
from scaledown.training.collator import answer_token_mask
from scaledown.training.losses import distillation_loss, slot_selection_loss, span_window_loss
from scaledown.training.selection import selector_pairs, train_slot_selector


ROWS = [
    {
        "question": "Who wrote Hamlet?",
        "documents": ["Shakespeare wrote Hamlet around 1600 in London.", "Water boils at 100 degrees Celsius."],
        "gold_answers": ["Shakespeare"],
    },
    {
        "question": "What is the capital of France?",
        "documents": ["The Eiffel Tower is in Paris, the capital of France."],
        "gold_answers": ["Paris"],
    },
    {"question": "Where is the Amazon?", "documents": ["Berlin lies on the Spree."], "gold_answers": ["Brazil"]},
]


def span_model(**kwargs):
    return make_scaledown(memory_injection_layer=2, memory_slots="span", **kwargs)


def test_span_positions_pick_the_window_with_the_most_probability_inside_the_document():
    # Row 0: document = positions 2..9 (8 tokens), the mass sits on 6 and 7: the 3-token window must cover both.
    is_document = torch.zeros(2, 12, dtype=torch.bool)
    is_document[0, 2:10] = True
    is_document[1, 3:5] = True  # a document shorter than the window
    scores = torch.zeros(2, 12)
    scores[0, 6:8] = 5.0
    scores[0, 10:] = 50.0  # outside the document (memory tokens, padding): never chosen
    positions, inside = _span_positions(scores, is_document, 3)
    assert positions[0].tolist() in ([5, 6, 7], [6, 7, 8])
    assert inside[0].all()
    assert positions[1].tolist() == [3, 4, 5] and inside[1].tolist() == [True, True, False]
    # A window never runs past the document's end: the mass on its last token gives the last full window.
    scores = torch.zeros(1, 12)
    scores[0, 9] = 9.0
    positions, inside = _span_positions(scores, is_document[:1], 3)
    assert positions[0].tolist() == [7, 8, 9] and inside.all()


def test_span_windows_cover_separate_candidates_in_document_order():
    # Document = positions 1..14; two peaks (at 12 and 3, the larger first): two 2-token windows take one each, in
    # document order; one 4-token window can only take one of them.
    is_document = torch.zeros(2, 16, dtype=torch.bool)
    is_document[0, 1:15] = True
    is_document[1, 1:4] = True  # 3 tokens: the first 2-token window fits, the second finds no room
    scores = torch.zeros(2, 16)
    scores[0, 12], scores[0, 3] = 6.0, 5.0
    scores[0, 15] = 50.0  # outside the document
    positions, inside = _span_positions(scores, is_document, 4, windows=2)
    assert 3 in positions[0].tolist() and 12 in positions[0].tolist() and inside[0].all()
    assert positions[0].tolist() == sorted(positions[0].tolist()) and len(set(positions[0].tolist())) == 4
    assert inside[1].tolist() == [True, True, False, False]
    one, _ = _span_positions(scores[:1], is_document[:1], 4, windows=1)
    assert not (3 in one[0].tolist() and 12 in one[0].tolist())
    # One window per token: the `count` most probable document tokens, in order.
    scores = torch.zeros(1, 16)
    scores[0, [2, 5, 9, 13]] = torch.tensor([4.0, 1.0, 3.0, 2.0])
    positions, inside = _span_positions(scores, is_document[:1], 4, windows=4)
    assert positions[0].tolist() == [2, 5, 9, 13] and inside.all()


def test_span_windows_are_saved_and_checked(tmp_path):
    model = span_model(span_windows=4)
    assert model.config.num_memory_tokens % 4 == 0
    model.save_pretrained(tmp_path)
    assert ScaleDownForCausalLM.from_pretrained(tmp_path).config.span_windows == 4
    with pytest.raises(ValueError, match="span_windows"):
        ScaleDownConfig(memory_slots="span", num_memory_tokens=8, span_windows=3)


def test_lexical_prior_peaks_next_to_the_query_words_not_on_them():
    # [start=1][query 5 6][<DOC>=2][document 7 5 8 9 9 6 4][<MEM>=3]; 6 is not informative (a short word)
    ids = torch.tensor([[1, 5, 6, 2, 7, 5, 8, 9, 9, 6, 4, 3]])
    is_document = torch.zeros_like(ids, dtype=torch.bool)
    is_document[0, 4:11] = True
    is_query = torch.zeros_like(is_document)
    is_query[0, 1:4] = True
    informative = torch.ones(10, dtype=torch.bool)
    informative[6] = False
    prior = lexical_prior(ids, is_document, is_query, informative, width=2.0, penalty=4.0)
    decay = [math.exp(-abs(t - 5) / 2.0) for t in range(12)]  # the one informative match sits at position 5
    expected = [decay[t] - (4.0 if t == 5 else 0.0) if 4 <= t < 11 else float("-inf") for t in range(12)]
    torch.testing.assert_close(prior[0], torch.tensor(expected))
    assert prior[0, 4] == prior[0, 6] > prior[0, 7] and prior[0, 5] < 0  # near the match, not on it
    informative[6] = True  # now the second match (positions 2 and 9) counts too
    assert lexical_prior(ids, is_document, is_query, informative, 2.0)[0, 9] < prior[0, 9] - 2.9


def test_span_scores_add_the_lexical_prior_saved_with_the_model(tmp_path):
    from scaledown.modeling_scaledown import _isin

    model = span_model().eval()
    prior = model.lexical_prior
    assert model.config.span_lexical_weight == 1.0 and prior is not None
    tokenizer = model.compressor_tokenizer
    assert not prior.informative[
        model.config.compressor_memory_token_ids + [model.config.document_separator_token_id]
    ].any()
    words = {tokenizer.decode([i]).strip(): bool(prior.informative[i]) for i in range(len(tokenizer))}
    assert not any(flag for word, flag in words.items() if len(word) < 4) and any(words.values())
    with torch.no_grad():
        model.slot_selector.score.weight.normal_()
    from scaledown.processing_scaledown import build_compressor_inputs

    inputs = build_compressor_inputs(tokenizer, model.config, ["Who wrote Hamlet?"], [[ROWS[0]["documents"][0]]])
    ids = inputs["compressor_input_ids"]
    with torch.no_grad():
        hidden = model.compressor(input_ids=ids, use_cache=False).last_hidden_state
        scores, is_document = model.score_slots(hidden, ids)
        is_memory = _isin(ids, torch.tensor(model.config.compressor_memory_token_ids))
        readable = is_memory.long().cumsum(1) == 0
        alone = model.slot_selector(hidden, readable).masked_fill(~is_document, float("-inf"))
    expected = alone.log_softmax(-1) + lexical_prior(
        ids, is_document, readable & ~is_document, prior.informative, 12.0
    )
    torch.testing.assert_close(scores, expected)
    model.save_pretrained(tmp_path)
    loaded = ScaleDownForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.lexical_prior.informative, prior.informative)
    assert loaded.config.span_lexical_weight == 1.0 and loaded.config.span_lexical_width == 12.0
    # off: no prior; a configuration saved before the option (no key) loads without it
    assert span_model(span_lexical_weight=0.0).lexical_prior is None
    saved = model.config.to_dict()
    del saved["span_lexical_weight"]
    assert ScaleDownConfig.from_dict(saved).span_lexical_weight == 0.0
    for bad in ({"span_lexical_weight": -1.0}, {"span_lexical_width": 0.0}, {"span_lexical_weight": True}):
        with pytest.raises(ValueError, match="span_lexical"):
            ScaleDownConfig(memory_slots="span", **bad)


def test_span_window_loss_is_the_answer_windows_negative_log_probability():
    inf = float("-inf")
    # row 0: 5 document tokens after 1 query token; row 1: a 1-token document (its one window); row 2: no answer
    scores = torch.tensor([[inf, 0.0, 1.0, 2.0, 0.5, -1.0, inf], [inf, inf, 0.3, inf, inf, inf, inf], [0.0] * 7])
    mask = torch.zeros(3, 7)
    mask[0, 4], mask[1, 2] = 1.0, 1.0
    # brute force, row 0, windows of 2: starts 1..4 (those that fit), masses from the softmax over the document
    p = scores[0, 1:6].softmax(-1).tolist()
    masses = [p[i] + p[i + 1] for i in range(4)]
    row0 = -math.log((masses[2] + masses[3]) / sum(masses))  # windows starting at 3 and 4 hold token 4
    assert span_window_loss(scores, mask, 2).item() == pytest.approx((row0 + 0.0) / 2, rel=1e-5)
    # the window loss asks for a window that holds the answer, not for mass on the answer's tokens: all mass on the
    # token before the answer puts half of the window mass on the window that holds both
    near = torch.tensor([[inf, 0.0, 9.0, 0.0, 0.0, 0.0, inf]])
    answer = torch.zeros(1, 7)
    answer[0, 3] = 1.0
    assert span_window_loss(near, answer, 2).item() == pytest.approx(math.log(2), abs=1e-2)
    assert slot_selection_loss(near, answer).item() > 8
    assert span_window_loss(scores, torch.zeros_like(mask), 2).item() == 0.0
    leaf = scores.clone().requires_grad_(True)
    span_window_loss(leaf, mask, 2).backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad[0, 1:6].abs().sum() > 0
    assert (leaf.grad[0, [0, 6]] == 0).all() and (leaf.grad[2] == 0).all()
    with pytest.raises(ValueError, match="differ"):
        span_window_loss(scores, mask[:, :3], 2)
    with pytest.raises(ValueError, match="window_size"):
        span_window_loss(scores, mask, 0)


def test_slot_selection_loss_is_the_answers_negative_log_probability():
    scores = torch.tensor([[0.0, 1.0, 2.0, float("-inf")], [3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # row 2: no answer
    probabilities = scores.softmax(-1)
    expected = -(math.log(probabilities[0, 1:3].sum()) + math.log(probabilities[1, 0])) / 2
    assert slot_selection_loss(scores, mask).item() == pytest.approx(expected, rel=1e-5)
    assert slot_selection_loss(scores, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        slot_selection_loss(scores, mask[:, :3])
    # In the distillation loss: weighted, and only with a weight.
    logits, labels = torch.randn(1, 3, 5), torch.tensor([[1, 2, 3]])
    base, _ = distillation_loss(logits, labels)
    total, terms = distillation_loss(
        logits, labels, slot_scores=scores, slot_answer_mask=mask, slot_selection_weight=2.0
    )
    assert total.item() == pytest.approx(base.item() + 2 * expected, rel=1e-5)
    assert "slot_selection" in terms
    unweighted, terms = distillation_loss(logits, labels, slot_scores=scores, slot_answer_mask=mask)
    assert unweighted.item() == pytest.approx(base.item()) and "slot_selection" not in terms


def test_answer_token_mask_marks_the_answer_tokens_of_each_pair():
    model = span_model()
    tokenizer, config = model.compressor_tokenizer, model.config
    questions = [row["question"] for row in ROWS]
    documents = [row["documents"] for row in ROWS]
    masks = answer_token_mask(tokenizer, config, questions, documents, [row["gold_answers"] for row in ROWS])
    assert len(masks) == 4  # pairs, question-major
    rows = ScaleDownDataCollator.from_model(model, num_train_documents=None, answer_field="gold_answers")(ROWS)
    ids = rows["compressor_input_ids"]
    assert tokenizer.decode(ids[0, masks[0]]).strip() == "Shakespeare"
    assert "Paris" in tokenizer.decode(ids[2, masks[2]])
    assert masks[1] == [] and masks[3] == []  # no answer in the document
    assert rows["slot_answer_mask"].shape == ids.shape
    assert rows["slot_answer_mask"].nonzero()[:, 0].unique().tolist() == [0, 2]
    # Text that only looks like the answer's control tokens stays text: a document holding the literal `<DOC>`.
    tricky = answer_token_mask(tokenizer, config, ["Who?"], [["<DOC> Shakespeare wrote it."]], [["Shakespeare"]])
    assert tricky[0]


def test_span_memory_is_the_compressors_own_states_at_the_chosen_window(rag_batch):
    model = span_model(enable_reranking=True).eval()
    questions, documents = rag_batch
    compressed = model.compress_documents(questions, documents, reuse_query_prefix=False)
    reused = model.compress_documents(questions, documents, reuse_query_prefix=True)
    for a, b in zip(compressed, reused):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # Recompute one pair by hand: the memory rows are compressor states at consecutive document positions.
    from scaledown.processing_scaledown import build_compressor_inputs

    inputs = build_compressor_inputs(model.compressor_tokenizer, model.config, questions[:1], documents[:1])
    with torch.no_grad():
        hidden = model.compressor(input_ids=inputs["compressor_input_ids"], use_cache=False).last_hidden_state[0]
        out = model.compress(**inputs)
    memory = compressed[0][0]
    rows = [int((hidden - vector).abs().sum(-1).argmin()) for vector in memory if vector.abs().sum() > 0]
    assert rows == list(range(rows[0], rows[0] + len(rows)))
    torch.testing.assert_close(memory[: len(rows)], hidden[rows])
    assert out.slot_scores.shape == inputs["compressor_input_ids"].shape
    assert torch.isinf(out.slot_scores[0, 0])  # the start token is not a document token


def test_span_model_saves_reloads_and_generates(tmp_path, rag_batch):
    model = span_model().eval()
    with torch.no_grad():
        model.slot_selector.score.weight.normal_()  # a selector that is not at its initialisation
    before = model.compress_documents(*rag_batch)
    model.save_pretrained(tmp_path)
    loaded = ScaleDownForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.memory_slots == "span" and loaded.slot_selector is not None
    for a, b in zip(before, loaded.compress_documents(*rag_batch)):
        torch.testing.assert_close(a, b)
    assert len(loaded.generate_from_text(*rag_batch, max_new_tokens=2)) == len(rag_batch[0])


def test_trainer_trains_the_selector_even_with_the_compressor_frozen(tmp_path):
    model = span_model()
    args = ScaleDownTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=1, report_to=[], use_cpu=True,
        answer_field="gold_answers", num_train_documents=2, freeze_compressor=True, save_strategy="no",
        learning_rate_compressor=1e-2, lr_scheduler_type="constant", warmup_ratio=0.0, logging_steps=1,
    )  # fmt: skip
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=ROWS)
    selector = {k: v.clone() for k, v in model.slot_selector.state_dict().items()}
    compressor = {k: v.clone() for k, v in model.compressor.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(v, model.slot_selector.state_dict()[k]) for k, v in selector.items())
    assert all(torch.equal(v, model.compressor.state_dict()[k]) for k, v in compressor.items())
    assert any("slot_selection" in entry for entry in trainer.state.log_history)


def test_train_slot_selector_learns_where_the_answers_are():
    torch.manual_seed(0)
    model = span_model(span_lexical_weight=0.0)  # the selector alone
    assert len(selector_pairs(ROWS)) == 2  # the row without its answer in a document is left out
    # Answers always sit right after "capital of": a pattern the selector can learn from the query and document.
    cities = ["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Vienna", "Oslo", "Prague"]
    rows = [
        {
            "question": f"What is the capital of country {i}?",
            "documents": [f"The museum and the river are in the capital of it, {city}, on Earth."],
            "gold_answers": [city],
        }
        for i, city in enumerate(cities * 4)
    ]
    result = train_slot_selector(model, rows, epochs=30, learning_rate=3e-3, batch_size=8, validation_fraction=0.25)
    assert result["pairs"] + result["validation_pairs"] == len(rows)
    assert result["loss"][-1] < 0.5 * result["loss"][0]
    assert result["window_hit_rate"]["after"] == 1.0
    with pytest.raises(ValueError, match="span"):
        train_slot_selector(make_scaledown(), rows)
