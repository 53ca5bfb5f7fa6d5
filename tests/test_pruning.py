"""The hard-pruning baseline built here: sentence selection under a token budget, and its place in the evaluation."""

import pytest
import torch
from tiny_models import make_encoder, make_scaledown

from scaledown.evaluation.pruning import SentencePruner, split_sentences
from scaledown.evaluation.run import evaluate_model, summary_lines


class KeywordEncoder(torch.nn.Module):
    """A stand-in sentence encoder whose embedding counts a few keywords: similarity = shared keywords."""

    WORDS = ["paris", "france", "capital", "berlin", "river"]

    class Output:
        def __init__(self, hidden):
            self.last_hidden_state = hidden

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **kwargs):
        texts = self.texts[: input_ids.shape[0]]
        self.texts = self.texts[input_ids.shape[0] :]
        rows = [[float(text.lower().count(w)) + 1e-3 for w in self.WORDS] for text in texts]
        hidden = torch.tensor(rows).unsqueeze(1).expand(-1, input_ids.shape[1], -1)
        return self.Output(hidden)


class KeywordTokenizer:
    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, texts, **kwargs):
        self.encoder.texts = list(texts)

        class Encoded(dict):
            def to(self, device):
                return self

        return Encoded(input_ids=torch.ones(len(texts), 2, dtype=torch.long), attention_mask=torch.ones(len(texts), 2))


def test_split_sentences():
    assert split_sentences("Paris is big. It is in France! Is it? 3 rivers flow.") == [
        "Paris is big.", "It is in France!", "Is it?", "3 rivers flow."
    ]  # fmt: skip
    assert split_sentences("no end") == ["no end"] and split_sentences("  ") == []


def test_pruner_keeps_the_closest_sentences_in_order_within_the_budget():
    model = make_scaledown()
    encoder = KeywordEncoder()
    document = "Berlin lies on the Spree. Paris is the capital of France. The river is long. France is large."
    lengths = [len(model.tokenizer(f" {s}", add_special_tokens=False)["input_ids"]) for s in split_sentences(document)]
    budget = lengths[1] + lengths[3]
    pruner = SentencePruner(encoder, KeywordTokenizer(encoder), model.tokenizer, budget)
    (kept,) = pruner.prune("What is the capital of France?", [document])
    assert kept == "Paris is the capital of France. France is large."  # most similar two, original order
    tight = SentencePruner(encoder, KeywordTokenizer(encoder), model.tokenizer, 3)
    (cut,) = tight.prune("What is the capital of France?", [document])
    assert len(model.tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 3 and cut  # first sentence, cut
    assert pruner.prune("q", [""]) == [""]
    with pytest.raises(ValueError, match="at least 1 token"):
        SentencePruner(encoder, KeywordTokenizer(encoder), model.tokenizer, 0)


def test_evaluation_reports_the_pruned_baseline_paired(rag_batch):
    model = make_scaledown()
    encoder, encoder_tokenizer = make_encoder("bert")  # a tiny real AutoModel encoder
    pruner = SentencePruner(encoder, encoder_tokenizer, model.tokenizer, budget=6)
    questions, documents = rag_batch
    rows = [{"question": q, "documents": d, "gold_answers": ["Paris"]} for q, d in zip(questions, documents)]
    report = evaluate_model(model, rows, num_documents=2, pruner=pruner, max_new_tokens=3)
    assert set(report["pruned"]["gold"]) >= {"match", "f1"} and report["paired_pruned"]["questions"] == 3
    assert report["settings"]["pruning"]["budget_tokens_per_document"] == 6
    assert all("pruned" in r for r in report["records"]) and report["timings"]["pruned_seconds"] > 0
    pruned_rows = [line for line in summary_lines(report) if line.startswith("| sentence pruning")]
    difference = report["paired_pruned"]["match_difference"]
    assert (
        len(pruned_rows) == 1 and "| " + f"{float(difference):.4f}".rstrip("0").rstrip(".") + " ± " in pruned_rows[0]
    )


def test_pruner_for_a_model_uses_its_rate_and_the_offline_minilm():
    model = make_scaledown()  # 32 document tokens -> 4 memory vectors: rate 8
    pruner = SentencePruner.for_model(model)
    assert pruner.budget == 4 and "minilm" in str(pruner.encoder.config._name_or_path).lower()
    assert SentencePruner.for_model(model, rate=2).budget == 16
    document = "Berlin lies on the Spree. Paris is the capital of France. Bananas are yellow."
    (kept,) = SentencePruner.for_model(model, rate=1).prune("What is the capital of France?", [document])
    assert "Paris" in kept and "Bananas" not in kept
