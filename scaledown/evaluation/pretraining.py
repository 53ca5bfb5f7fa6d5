"""Held-out scores of compressor pretraining (`scaledown pretrain`): auto-encoding reconstruction and continuation
perplexity, read through the pretraining collator of `scaledown.training.pretraining`."""

import math

import torch

from ..training.pretraining import AUTOENCODING, CONTINUATION, PretrainingCollator
from . import load_metric


@torch.no_grad()
def evaluate_pretraining(model, rows: list[dict], batch_size: int = 8, max_new_tokens: int | None = None) -> dict:
    """On held-out pretraining rows: auto-encoding reconstruction (greedy; ROUGE-L and token F1 against the chunk)
    and continuation perplexity (exp of the per-token cross-entropy of the true continuation given the memory)."""
    model.eval()
    collator = PretrainingCollator.from_model(model)
    device = next(model.parameters()).device
    autoencoding = [dict(r, task=AUTOENCODING) for r in rows]
    continuation = [dict(r, task=CONTINUATION) for r in rows if r["continuation"]]
    max_new_tokens = max_new_tokens or model.config.doc_max_length + 8
    reconstructions = []
    for start in range(0, len(autoencoding), batch_size):
        batch = autoencoding[start : start + batch_size]
        memory = model.compress(**{k: v.to(device) for k, v in collator.compressor_inputs(batch).items()})
        prompts = collator.generator_inputs(batch, with_targets=False, padding_side="left")
        output = model.generate(
            **{k: v.to(device) for k, v in prompts.items()},
            memory_embeddings=memory.memory_embeddings,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        reconstructions += model.tokenizer.batch_decode(output, skip_special_tokens=True)
    total, tokens = 0.0, 0
    for start in range(0, len(continuation), batch_size):
        batch = {k: v.to(device) for k, v in collator(continuation[start : start + batch_size]).items()}
        total += float(model(**batch, reduction="sum").loss)  # summed over the target tokens
        tokens += int((batch["labels"][:, 1:] != -100).sum())
    scores = load_metric("rag_qa").compute(
        predictions=[r.strip() for r in reconstructions], references=[[r["text"]] for r in autoencoding]
    )
    return {
        "rows": len(rows),
        "autoencoding_rouge_l": round(scores["rouge_l"], 4),
        "autoencoding_f1": round(scores["f1"], 4),
        "continuation_perplexity": round(math.exp(total / max(tokens, 1)), 3),
        "continuation_tokens": tokens,
        "examples": [{"text": r["text"], "reconstruction": p} for r, p in zip(autoencoding[:3], reconstructions)],
    }
