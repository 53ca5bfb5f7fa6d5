"""`memory_slots="span"`: a learned selector picks, per document, the consecutive tokens whose compressor states become
the memory (README, *Reading the memory*)."""

import math

import pytest
import torch
from tiny_models import make_scaledown

from scaledown import ScaleDownConfig, ScaleDownForCausalLM
from scaledown.modeling_scaledown import _span_positions
from scaledown.training import ScaleDownDataCollator, ScaleDownTrainer, ScaleDownTrainingArguments
from scaledown.training.collator import answer_token_mask
from scaledown.training.losses import distillation_loss, slot_selection_loss
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
    model = span_model()
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
