"""Span selector variants fitted on the same cached compressor states, scored where it matters: the held-out hit rate
on the demo's validation pairs (the window holds an answer token) and the coverage of an independent set's
answer-bearing top-k documents (questions and documents whose chosen window keeps an answer token).

The compressor (the demo's: SmolLM2, 5 layers, seed-0 model) runs once; every variant re-initialises only the
selector (`--seeds`), so variants differ by their fit, not by the compressor. A variant is `name:key=value,...`:

- `loss=token` (the shipped `slot_selection_loss`) or `loss=window` (`span_window_loss`: the negative
  log-probability of the windows that hold an answer token, a window's probability being its softmax mass);
- `epochs`, `lr`, `dropout` (the selector layers'), `hidden` (its width), `best=1` (keep the epoch with the best
  validation hit rate), `ensemble=1` (average the seeds' token probabilities instead of scoring each seed alone),
  `lexical=W` (add W times the shipped lexical prior, `scaledown.modeling_scaledown.lexical_prior`, to the log of
  the selector's probabilities; `epochs=0` scores it alone; `lexwidth`, `lexpenalty` its shape), `trainlex=1` (the
  prior is added while fitting too, as `score_slots` does with `span_lexical_weight`: the selector learns a
  correction to it).

    python benchmarks/probes/selector_variants.py --eval-data outputs/answer-match/indep80 \
        token:loss=token window:loss=window --seeds 0 1 2 --output docs/results/selector-variants.json
"""

import argparse
import copy
import json
import math
import os
import random
import time

import torch
from datasets import load_from_disk
from demo_setup import demo_model
from transformers import get_cosine_schedule_with_warmup

from scaledown.modeling_scaledown import (
    ScaleDownLexicalPrior,
    ScaleDownSlotSelector,
    _isin,
    _span_positions,
    lexical_prior,
)
from scaledown.training.losses import slot_selection_loss, span_window_loss
from scaledown.training.selection import _collate, _compressor_states, selector_pairs


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, options = text.partition(":")
    settings = {"loss": "token", "epochs": 16, "lr": 1e-3, "dropout": 0.1, "hidden": 256, "best": 0, "ensemble": 0}
    settings.update(lexical=0.0, lexwidth=6.0, lexpenalty=4.0, trainlex=0)
    for option in filter(None, options.split(",")):
        key, value = option.split("=")
        settings[key] = value if key == "loss" else float(value)
    return name, settings


def batches(items, pad_id, size=64):
    for start in range(0, len(items), size):
        yield _collate(items[start : start + size], pad_id)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--eval-data", default="outputs/answer-match/indep80")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output")
    parser.add_argument(
        "--lexical-weights", type=float, nargs="*", default=[],
        help="Score every fitted variant with each of these lexical weights (instead of its `lexical`).",
    )  # fmt: skip
    parser.add_argument("--cache", help="Keep the compressor states in this file (torch.save) and reuse them.")
    args = parser.parse_args()
    model = demo_model(0, span_lexical_weight=0.0)  # the selector alone; the prior is added here
    config, tokenizer = model.config, model.compressor_tokenizer
    pad_id = tokenizer.pad_token_id or 0
    count = config.num_memory_tokens
    began = time.perf_counter()
    if args.cache and os.path.exists(args.cache):
        cached, evaluation = torch.load(args.cache, weights_only=True)  # tensors, lists, dicts only
    else:
        cached = _compressor_states(model, selector_pairs(load_from_disk(args.data)["train"].to_list()), batch_size=16)
        evaluation = []  # answer-bearing (question, document) states of the independent set, with their question
        for index, row in enumerate(load_from_disk(args.eval_data)[args.eval_split].to_list()):
            pairs = [(row["question"], d, row["gold_answers"]) for d in row["documents"][: args.documents]]
            for item in _compressor_states(model, pairs, batch_size=16):
                evaluation.append({**item, "question": index})
        if args.cache:
            torch.save((cached, evaluation), args.cache)
    random.Random(0).shuffle(cached)  # train_slot_selector's split
    held_out = max(1, int(len(cached) * 0.1))
    validation, train = cached[:held_out], cached[held_out:]
    states_seconds = round(time.perf_counter() - began, 1)
    print(f"states: {len(train)} train, {len(validation)} validation, {len(evaluation)} answer-bearing eval documents "
          f"of {len({e['question'] for e in evaluation})} questions ({states_seconds} s)", flush=True)  # fmt: skip
    memory_ids = torch.tensor(config.compressor_memory_token_ids)
    vocabulary = ScaleDownLexicalPrior(len(tokenizer), 6.0)
    vocabulary.set_vocabulary(tokenizer)
    informative = vocabulary.informative

    def lexical_scores(ids, is_document, informative, width, penalty):
        """The shipped prior (`scaledown.modeling_scaledown.lexical_prior`), the query read as `score_slots` does."""
        readable = _isin(ids, memory_ids).long().cumsum(1) == 0
        return lexical_prior(ids, is_document, readable & ~is_document, informative, width, penalty)

    def probabilities(selectors, items, lexical, lexwidth=6.0, lexpenalty=4.0):
        """Per batch of `items`: log of the selectors' mean token probabilities (+ lexical), document mask, answer."""
        out = []
        for hidden, ids, answer in batches(items, pad_id):
            total, is_document = 0.0, None
            for selector in selectors:
                model.slot_selector = selector.eval()
                scores, is_document = model.score_slots(hidden, ids)
                total = total + torch.softmax(scores, -1)
            if not selectors:
                _, is_document = model.score_slots(hidden, ids)
                total = torch.ones_like(ids, dtype=torch.float)
            scores = torch.log(total / max(1, len(selectors))).masked_fill(~is_document, float("-inf"))
            if lexical:
                scores = scores + lexical * lexical_scores(ids, is_document, informative, lexwidth, lexpenalty)
            out.append((scores, is_document, answer))
        return out

    def hits(selectors, items, lexical, lexwidth=6.0, lexpenalty=4.0):
        result = []
        for scores, is_document, answer in probabilities(selectors, items, lexical, lexwidth, lexpenalty):
            positions, inside = _span_positions(scores, is_document, count)
            result.append(((torch.gather(answer, 1, positions) > 0) & inside).any(dim=1))
        return torch.cat(result)

    def fit(settings, seed):
        torch.manual_seed(seed)
        width = model.slot_selector.input_proj.in_features
        selector = ScaleDownSlotSelector(
            width, int(settings["hidden"]), config.slot_selector_layers, config.slot_selector_heads
        )
        for module in selector.modules():
            model._init_weights(module)
        for module in selector.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = settings["dropout"]
        epochs = int(settings["epochs"])
        lexical_shape = (settings["lexwidth"], settings["lexpenalty"])
        if epochs == 0:
            return selector, []
        optimizer = torch.optim.AdamW(selector.parameters(), lr=settings["lr"], weight_decay=0.01)
        steps = math.ceil(len(train) / 32) * epochs
        scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
        generator = torch.Generator().manual_seed(0)
        curve, best = [], (-1.0, None)
        for _ in range(epochs):
            model.slot_selector = selector.train()
            for index in torch.randperm(len(train), generator=generator).split(32):
                hidden, ids, answer = _collate([train[i] for i in index.tolist()], pad_id)
                scores, is_document = model.score_slots(hidden, ids)
                if settings["trainlex"]:  # the selector learns a correction to the lexical prior
                    prior = lexical_scores(ids, is_document, informative, *lexical_shape)
                    scores = torch.log_softmax(scores, -1) + settings["lexical"] * prior
                if settings["loss"] == "window":
                    loss = span_window_loss(scores, answer, count)
                else:
                    loss = slot_selection_loss(scores, answer)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            with torch.no_grad():
                weight = settings["lexical"] if settings["trainlex"] else 0.0
                rate = float(hits([selector], validation, weight, *lexical_shape).float().mean())
            curve.append(round(rate, 4))
            if rate > best[0]:
                best = (rate, copy.deepcopy(selector.state_dict()))
        if settings["best"]:
            selector.load_state_dict(best[1])
        return selector, curve

    results = {"command": vars(args), "states_seconds": states_seconds, "variants": {}}
    eval_questions = torch.tensor([e["question"] for e in evaluation])
    for text in args.variants:
        name, settings = parse_variant(text)
        began = time.perf_counter()
        fitted = [fit(settings, seed) for seed in args.seeds]
        selectors = [selector for selector, _ in fitted] if settings["epochs"] else []
        groups = [selectors] if settings["ensemble"] or not selectors else [[s] for s in selectors]
        weights = args.lexical_weights if selectors and args.lexical_weights else [settings["lexical"]]
        for weight in weights:
            scored = []
            with torch.no_grad():
                for group in groups:
                    lexical = (weight, settings["lexwidth"], settings["lexpenalty"])
                    validation_hits = hits(group, validation, *lexical)
                    eval_hits = hits(group, evaluation, *lexical)
                    questions = len(set(eval_questions[eval_hits].tolist()))
                    scored.append({
                        "validation_hit_rate": round(float(validation_hits.float().mean()), 4),
                        "eval_documents_hit": int(eval_hits.sum()), "eval_questions_hit": questions,
                    })  # fmt: skip
            key = name if len(weights) == 1 else f"{name}+lexical{weight:g}"
            record = {
                "settings": {**settings, "lexical": weight}, "seconds": round(time.perf_counter() - began, 1),
                "per_seed": scored, "validation_curves": [curve for _, curve in fitted],
                "mean": {k: round(sum(s[k] for s in scored) / len(scored), 4) for k in scored[0]},
            }  # fmt: skip
            results["variants"][key] = record
            print(json.dumps({key: {"mean": record["mean"], "per_seed": scored}}), flush=True)
        if args.output:
            with open(args.output, "w") as handle:
                json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
