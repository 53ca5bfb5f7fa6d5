"""Span selector scored across a question's documents: does one softmax over all of them rank the windows?

Trains `ScaleDownSlotSelector` (the product class, fresh each time) on compressor states of every (question, document)
pair of the training questions, with `slot_selection_loss` per document (`doc`: the shipped loss), over all of a
question's documents at once (`question`: the answer-less documents become negatives), or both (`doc+question`). On the
independent questions with their top-10 documents, ranks each question's documents by the log-mass of their chosen
window and answers from the top-k windows with the untrained generator.

    python benchmarks/probes/span_xdoc.py outputs/answer-match/demo-data-all 5 question,doc 8 1,2,3,10

Arguments: training data folder, documents per training question, loss modes, epochs, k values; an optional
sixth argument is where the training states are cached (default /tmp).
"""

import json
import random
import sys
import time
from pathlib import Path

import torch
from datasets import load_from_disk

from scaledown import ScaleDownForCausalLM
from scaledown.evaluation.text import match
from scaledown.modeling_scaledown import ScaleDownSlotSelector, _span_positions
from scaledown.offline_weights import smollm2_path
from scaledown.processing_scaledown import build_compressor_inputs
from scaledown.training.collator import answer_token_mask
from scaledown.training.losses import slot_selection_loss


torch.set_num_threads(2)
data, ndocs, modes, epochs, ks = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]), sys.argv[5]
ks = [int(k) for k in ks.split(",")]
cache = Path(sys.argv[6] if len(sys.argv) > 6 else f"/tmp/xdoc-{Path(data).name}-{ndocs}.pt")
model = ScaleDownForCausalLM.from_generator(
    str(smollm2_path()), num_compressor_layers=5, memory_injection_layer=5, memory_slots="span"
)
model.eval()
config, tokenizer = model.config, model.compressor_tokenizer
memory_ids = set(config.compressor_memory_token_ids)
pad_id = tokenizer.pad_token_id or 0


@torch.no_grad()
def states(question, documents, answers):
    """Per document: hidden (fp16) and ids through <MEM_1>, answer positions."""
    inputs = build_compressor_inputs(tokenizer, config, [question] * len(documents), [[d] for d in documents])
    ids = inputs["compressor_input_ids"]
    hidden = model.compressor(
        input_ids=ids, attention_mask=inputs["compressor_attention_mask"], use_cache=False
    ).last_hidden_state
    masks = answer_token_mask(tokenizer, config, [question] * len(documents), [[d] for d in documents],
                              [answers] * len(documents))  # fmt: skip
    out = []
    for row in range(len(documents)):
        end = next(i for i, t in enumerate(ids[row].tolist()) if t in memory_ids) + 1
        out.append({"hidden": hidden[row, :end].half(), "ids": ids[row, :end], "answer": masks[row]})
    return out


def collate(groups):
    """groups: list of per-question lists of documents -> hidden (Q*D, L, H), ids, answer, doc_valid (Q, D)."""
    width = groups[0][0]["hidden"].shape[-1]
    docs = max(len(g) for g in groups)
    length = max(len(d["ids"]) for g in groups for d in g)
    hidden = torch.zeros(len(groups) * docs, length, width, dtype=torch.float16)
    ids = torch.full((len(groups) * docs, length), pad_id, dtype=torch.long)
    answer = torch.zeros(len(groups) * docs, length)
    valid = torch.zeros(len(groups), docs, dtype=torch.bool)
    for q, group in enumerate(groups):
        for d, item in enumerate(group):
            row = q * docs + d
            hidden[row, : len(item["ids"])] = item["hidden"]
            ids[row, : len(item["ids"])] = item["ids"]
            answer[row, item["answer"]] = 1.0
            valid[q, d] = True
    # rows of missing documents: one <DOC> + one <MEM_1> token so that score_slots has a (scored-away) document mask
    for q in range(len(groups)):
        for d in range(len(groups[q]), docs):
            ids[q * docs + d, :2] = torch.tensor(
                [config.document_separator_token_id, config.compressor_memory_token_ids[0]]
            )
    return hidden, ids, answer, valid


started = time.time()
if cache.exists():
    train = torch.load(cache, weights_only=True)
else:
    rows = load_from_disk(data)["train"].to_list()
    train = []
    for i, r in enumerate(rows):
        group = states(r["question"], r["documents"][:ndocs], r["gold_answers"])
        if any(d["answer"] for d in group):
            train.append(group)
        if i % 200 == 0:
            print(f"states {i}/{len(rows)} {time.time() - started:.0f}s", flush=True)
    torch.save(train, cache)
print(f"{len(train)} training questions with an answer in their {ndocs} documents ({time.time() - started:.0f}s)")

test_rows = load_from_disk("outputs/answer-match/indep80")["test"].to_list()
test = [states(r["question"], r["documents"][:10], r["gold_answers"]) for r in test_rows]
record = {"data": data, "ndocs": ndocs, "train_questions": len(train), "epochs": epochs, "runs": []}


def fit(mode, seed=0):
    torch.manual_seed(seed)
    selector = ScaleDownSlotSelector(
        config.compressor_config.hidden_size, config.slot_selector_hidden_size, config.slot_selector_layers,
        config.slot_selector_heads,
    )  # fmt: skip
    model.slot_selector = selector
    optimizer = torch.optim.AdamW(selector.parameters(), lr=1e-3, weight_decay=0.01)
    batch = 8
    steps = epochs * -(-len(train) // batch)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, steps // 20, steps)
    order = list(range(len(train)))
    rng = random.Random(seed)
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        selector.train()
        for start in range(0, len(order), batch):
            hidden, ids, answer, valid = collate([train[i] for i in order[start : start + batch]])
            scores, _ = model.score_slots(hidden.float(), ids)
            loss = 0.0
            if "doc" in mode:
                loss = loss + slot_selection_loss(scores, answer)
            if "question" in mode:
                q = valid.shape[0]
                loss = loss + slot_selection_loss(scores.view(q, -1), answer.view(q, -1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        print(f"{mode} epoch {epoch + 1}: loss {total / -(-len(order) // batch):.4f} {time.time() - started:.0f}s",
              flush=True)  # fmt: skip
    selector.eval()


@torch.no_grad()
def evaluate(mode):
    ranked, hits_any, top_hit, per_doc_hit = [], 0, 0, []
    for group in test:
        hidden, ids, answer, _ = collate([group])
        scores, is_document = model.score_slots(hidden.float(), ids)
        positions, inside = _span_positions(scores, is_document, config.num_memory_tokens)
        window = torch.gather(scores, 1, positions).masked_fill(~inside, float("-inf")).logsumexp(1)
        window = window - scores.view(1, -1).logsumexp(1)  # log-mass under one softmax over all documents
        hit = ((torch.gather(answer, 1, positions) > 0) & inside).any(1)
        order = window.argsort(descending=True).tolist()
        memory = (torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])).float()
                  * inside.unsqueeze(-1))  # fmt: skip
        ranked.append((order, memory))
        has = [bool(d["answer"]) for d in group]
        if any(has):
            hits_any += 1
            top_hit += bool(hit[order[0]])
        per_doc_hit += [bool(h) for h, a in zip(hit.tolist(), has) if a]
    result = {
        "mode": mode,
        "questions_with_answer_in_top10": hits_any,
        "top_window_hit": round(top_hit / max(hits_any, 1), 4),
        "window_hit_per_answer_doc": round(sum(per_doc_hit) / max(len(per_doc_hit), 1), 4),
    }
    for k in ks:
        for by in ("score", "retrieval"):
            if by == "retrieval" and k == 10:
                continue
            matches = []
            for r, (order, memory) in zip(test_rows, ranked):
                keep = order[:k] if by == "score" else list(range(min(k, len(order))))
                answer = model.generate_from_compressed([r["question"]], [memory[keep]], max_new_tokens=32,
                                                        do_sample=False)[0]  # fmt: skip
                matches.append(match(answer, r["gold_answers"]))
            result[f"match_top{k}_by_{by}"] = round(sum(matches) / len(matches), 4)
            print(mode, k, by, result[f"match_top{k}_by_{by}"], f"{time.time() - started:.0f}s", flush=True)
    return result


for mode in modes:
    fit(mode)
    record["runs"].append(evaluate(mode))
    print(json.dumps(record["runs"][-1]), flush=True)
out = Path("docs/results/span-xdoc-probe.json")
old = json.loads(out.read_text()) if out.exists() else {"runs": []}
old["runs"].append(record | {"command": "python " + " ".join(sys.argv)})
out.write_text(json.dumps(old, indent=2) + "\n")
