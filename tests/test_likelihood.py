import pytest
import torch
from tiny_models import make_scaledown

from scaledown import build_generator_inputs, memory_segments, raw_document_segments
from scaledown.evaluation import likelihood
from scaledown.evaluation.likelihood import answer_nll, document_gain, foreign_documents
from scaledown.training import ScaleDownDataCollator
from scaledown.training.losses import answer_nll_per_row


ROWS = [
    {"question": "Capital of France?", "documents": ["Paris is the capital of France.", "Berlin is in Germany."],
     "gold_answers": ["Paris"]},
    {"question": "Who wrote Hamlet?", "documents": ["Shakespeare wrote Hamlet around 1600 in London."],
     "gold_answers": ["William Shakespeare"]},
    {"question": "Longest river?", "documents": ["The Nile is the longest river of Africa.", "It flows north."],
     "gold_answers": ["the Nile"]},
    {"question": "Where?", "documents": ["Nowhere."], "gold_answers": []},
]  # fmt: skip


def reference_nll(model, question, documents, answer, uncompressed):
    """One unpadded row, full logits, EOS not scored: the straightforward computation."""
    if uncompressed:
        segments, memory = raw_document_segments(model.tokenizer, model.config, [documents]), None
    else:
        memory = model.compress_documents([question], [documents])[0]
        segments = memory_segments(model.config, [len(documents)])
    inputs = build_generator_inputs(model.tokenizer, model.config, [question], segments, [answer], "right")
    labels = inputs["labels"]
    labels[0, -1] = -100  # the EOS
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       memory_embeddings=memory).logits  # fmt: skip
    return answer_nll_per_row(logits, labels).item()


@pytest.mark.parametrize("uncompressed", [False, True])
def test_answer_nll_matches_the_unpadded_full_logits_computation(uncompressed):
    model = make_scaledown("llama").eval()
    rows = ROWS[:3]
    questions, documents = [r["question"] for r in rows], [r["documents"] for r in rows]
    answers = [r["gold_answers"][0] for r in rows]
    batched = answer_nll(model, questions, documents, answers, uncompressed=uncompressed, batch_size=3)
    expected = [reference_nll(model, q, d, a, uncompressed) for q, d, a in zip(questions, documents, answers)]
    assert batched == pytest.approx(expected, abs=1e-4)
    # The uncompressed score reads raw text with the adapters off: it differs from the compressed one.
    other = answer_nll(model, questions, documents, answers, uncompressed=not uncompressed)
    assert max(abs(a - b) for a, b in zip(batched, other)) > 1e-3


def test_answer_nll_rejects_bad_answers():
    model = make_scaledown("llama")
    with pytest.raises(ValueError, match="2 answers for 1 questions"):
        answer_nll(model, ["q?"], [["d"]], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty string"):
        answer_nll(model, ["q?"], [["d"]], [" "])


def test_foreign_documents_share_nothing_with_the_question():
    documents = [["a", "b"], ["b", "c"], ["d"], ["a"]]
    assert foreign_documents(documents) == [["d"], ["d"], ["a"], ["b", "c"]]
    with pytest.raises(ValueError, match="Question 0 shares a document"):
        foreign_documents([["a"], ["a", "b"]])


def test_document_gain_reports_both_systems_and_reuses_a_baseline(monkeypatch):
    model = make_scaledown("llama")
    report = document_gain(model, ROWS, num_documents=10)
    assert report["questions"] == 3  # the row without gold answers is skipped
    for system in ("compressed", "uncompressed"):
        entry = report[system]
        assert entry["document_gain"] == pytest.approx(
            entry["nll_foreign_documents"] - entry["nll_own_documents"], abs=2e-4
        )
    raw_gain = report["uncompressed"]["document_gain"]
    expected_share = report["compressed"]["document_gain"] / raw_gain if raw_gain > 0 else None
    assert report.get("gain_share") == (pytest.approx(expected_share, abs=1e-3) if expected_share else None)
    calls = []
    original = likelihood.answer_nll
    monkeypatch.setattr(likelihood, "answer_nll", lambda *a, **k: calls.append(k["uncompressed"]) or original(*a, **k))
    baseline = {**report["uncompressed"], "document_gain": 2.0}
    again = document_gain(model, ROWS, baseline=baseline)
    assert calls == [False, False]  # only the compressed model is scored again
    assert again["compressed"] == report["compressed"]
    assert again["gain_share"] == pytest.approx(report["compressed"]["document_gain"] / 2.0, abs=1e-3)
    with pytest.raises(ValueError, match="baseline scored 5 questions"):
        document_gain(model, ROWS, baseline={**baseline, "questions": 5})


def test_document_gain_rises_when_the_generator_learns_to_read_the_memory():
    """End to end through the compressor, the memory slots and LoRA: on a task whose answer is only in the document,
    training makes the compressed model's document gain clearly positive (~0 untrained; stays 0 if the memory were
    not written into the prompt: checked by zeroing it)."""
    model = make_scaledown("llama")
    words = ["Paris", "Berlin", "Amazon", "Hamlet"]
    rows = [{"question": "What is the capital?", "documents": [f"The capital is {w}."], "gold_answers": [w]}
            for w in words]  # fmt: skip
    before = document_gain(model, rows, with_baseline=False)["compressed"]["document_gain"]
    assert abs(before) < 0.3
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    collate = ScaleDownDataCollator.from_model(model, answer_field="gold_answers")
    model.train()
    for _ in range(150):
        batch = collate(rows)
        batch.pop("teacher_scores", None)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = document_gain(model, rows, with_baseline=False)["compressed"]
    assert after["document_gain"] > 1.0, after  # measured: 3.7 nats/token (0.07 before training)
