"""A hard-pruning baseline built here (Provence / LLMLingua *style*, neither of them): per document, keep the sentences
most similar to the query under a sentence encoder until a token budget is met, and give the generator the rest as
text.

The budget defaults to the ScaleDown model's own compression: `doc_max_length / compression_rate` generator tokens
per document (8 of 128 at rate 16), so that the pruned prompt and the compressed one hold as many document positions.
Kept sentences stay in their original order. Sentence encoder: all-MiniLM-L6-v2 from its PyPI package offline (any
sentence-transformers-style `AutoModel` folder or hub id otherwise), mean-pooled and L2-normalised.
"""

import math
import re

import torch


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (after `.`, `!` or `?` followed by a capital or a digit); never an empty list for
    non-empty text."""
    pieces = [piece.strip() for piece in _SENTENCE_END.split(text.strip())]
    return [piece for piece in pieces if piece]


class SentencePruner:
    """Keep, per document, the sentences closest to the query until `budget` generator tokens are used.

    Args:
        encoder, encoder_tokenizer: the sentence encoder (`AutoModel` + tokenizer), e.g. all-MiniLM-L6-v2.
        tokenizer: the generator's tokenizer (the budget counts its tokens).
        budget (`int`): generator tokens kept per document (at least the first-ranked sentence, cut to the budget).
    """

    def __init__(self, encoder, encoder_tokenizer, tokenizer, budget: int):
        if budget < 1:
            raise ValueError(f"The pruning budget must be at least 1 token per document, got {budget}.")
        self.encoder, self.encoder_tokenizer = encoder, encoder_tokenizer
        self.tokenizer, self.budget = tokenizer, budget

    @classmethod
    def for_model(cls, model, encoder: str | None = None, rate: int | None = None) -> "SentencePruner":
        """A pruner at the ScaleDown `model`'s compression (or `rate`), with all-MiniLM-L6-v2 (offline) or
        `encoder`."""
        from transformers import AutoModel, AutoTokenizer

        if encoder is None:
            from ..offline_weights import minilm_path

            encoder = str(minilm_path())
        rate = rate or model.config.compression_rate
        budget = max(1, math.ceil(model.config.doc_max_length / rate))
        loaded = AutoModel.from_pretrained(encoder).eval()
        return cls(loaded, AutoTokenizer.from_pretrained(encoder), model.tokenizer, budget)

    @torch.no_grad()
    def prune(self, question: str, documents: list[str]) -> list[str]:
        """The pruned text of each document, for one question."""
        from ..training.data import sentence_embeddings

        pruned = []
        for document in documents:
            sentences = split_sentences(document)
            if not sentences:
                pruned.append("")
                continue
            vectors = sentence_embeddings(self.encoder, self.encoder_tokenizer, [question, *sentences])
            order = torch.argsort(vectors[1:] @ vectors[0], descending=True).tolist()
            # Each sentence as it sits in the joined text (after a space): the joined text never outgrows the sum.
            spaced = [f" {sentence}" for sentence in sentences]
            lengths = [len(ids) for ids in self.tokenizer(spaced, add_special_tokens=False)["input_ids"]]
            kept, used = [], 0
            for index in order:
                if used + lengths[index] > self.budget and kept:
                    continue
                kept.append(index)
                used += lengths[index]
                if used >= self.budget:
                    break
            text = " ".join(sentences[i] for i in sorted(kept))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            pruned.append(text if len(ids) <= self.budget else self.tokenizer.decode(ids[: self.budget]))
        return pruned
