"""Is the memory path limited by how slots are *built* or by how they are *read*? A diagnostic at initialisation.

The untrained model (SmolLM2-135M-Instruct, 5-layer compressor, memory at generator layer 5, rate 16) answers each
held-out question whose top-1 document holds a gold answer, from that document alone, with 8 memory vectors built in
different ways, next to the base generator reading text, greedy, 32 tokens, Match (gold answer in the output):

- `chunk_mean`: the shipped pooling at initialisation (mean of each 16-token chunk's layer-5 states);
- `oracle_states`: the layer-5 compressor states of the 8 consecutive document tokens starting 2 before the gold
  answer (an oracle selection: the upper bound of a token selector), injected at layer 5;
- `oracle_text`: the same 8 tokens as text; `first8_states` / `first8_text`: the document's first 8 tokens;
- `learned_states` (with `--selector-rows N`): the window around the token a scorer trained on N training questions
  (`--data`'s train split, answer-span tokens vs the rest, binary cross-entropy on standardised layer-5 states; an
  MLP with `--selector mlp`) finds most answer-like, with its hit rate (window holds an answer token);
- `raw_top1`: the base generator reading the whole 128-token document.

    python benchmarks/token_selection.py --eval-data outputs/answer-match/indep80 --name init-oracle
    python benchmarks/token_selection.py --eval-data outputs/answer-match/indep80 --name learned-mlp-4000 \
        --data outputs/reading/squad-all --selector-rows 4000 --selector mlp

Each run is appended with its exact command to `--record` (default `docs/results/token-selection.json`).
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from datasets import load_from_disk

from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.processing_scaledown import build_compressor_inputs


WINDOW_BEFORE = 2  # tokens kept before the selected one


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-data", required=True, help="Folder with a test split (question, documents, answers).")
    parser.add_argument("--eval-questions", type=int, default=80)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", default=None, help="Folder whose train split fits the learned selector.")
    parser.add_argument("--selector-rows", type=int, default=0, help="Training questions of the selector (0: none).")
    parser.add_argument("--selector", choices=["linear", "mlp"], default="linear")
    parser.add_argument("--selector-epochs", type=int, default=8)
    parser.add_argument("--systems", nargs="+", default=None, help="Subset of the systems to run.")
    parser.add_argument("--record", default="docs/results/token-selection.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class Reader:
    """Layer-5 compressor states of each (question, document) pair's document tokens, with their character offsets."""

    def __init__(self, model):
        self.model, self.config, self.tokenizer = model, model.config, model.compressor_tokenizer
        self.memory_ids = set(self.config.compressor_memory_token_ids)

    @torch.no_grad()
    def __call__(self, questions: list[str], documents: list[str], batch_size: int = 16):
        out = []
        for start in range(0, len(questions), batch_size):
            qs, ds = questions[start : start + batch_size], documents[start : start + batch_size]
            batch = build_compressor_inputs(self.tokenizer, self.config, qs, [[d] for d in ds])
            ids = batch["compressor_input_ids"]
            hidden = self.model.compressor(
                input_ids=ids, attention_mask=batch["compressor_attention_mask"], use_cache=False
            ).last_hidden_state
            for row, document in enumerate(ds):
                tokens = ids[row].tolist()
                first = tokens.index(self.config.document_separator_token_id) + 1
                end = next(i for i, t in enumerate(tokens) if t in self.memory_ids)
                encoded = self.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
                out.append((hidden[row, first:end], encoded["offset_mapping"][: end - first]))
        return out


def answer_tokens(document: str, offsets, answers: list[str]) -> torch.Tensor | None:
    """1 for the document tokens overlapping the first occurrence of a gold answer, else 0 (None: no answer)."""
    lowered = document.lower()
    for answer in answers:
        at = lowered.find(answer.lower())
        if answer.strip() and at >= 0:
            return torch.tensor([float(s < at + len(answer) and e > at) for s, e in offsets])
    return None


def window(center: int, length: int, size: int = 8) -> list[int]:
    start = max(0, min(center - WINDOW_BEFORE, length - size))
    return list(range(start, min(start + size, length)))


def fit_selector(reader, rows, kind: str, epochs: int, seed: int):
    questions, documents, labels = [], [], []
    for row in rows:
        for document in row["documents"]:
            if any(a.strip() and a.lower() in document.lower() for a in row["gold_answers"]):
                questions.append(row["question"])
                documents.append(document)
                labels.append(row["gold_answers"])
                break
    features, targets = [], []
    for (states, offsets), document, answers in zip(reader(questions, documents), documents, labels):
        target = answer_tokens(document, offsets, answers)
        if target is not None:
            features.append(states.float())
            targets.append(target)
    x, y = torch.cat(features), torch.cat(targets)
    mean, std = x.mean(0), x.std(0) + 1e-4
    x = (x - mean) / std
    torch.manual_seed(seed)
    width = x.shape[1]
    head = (
        torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
        if kind == "mlp"
        else torch.nn.Linear(width, 1)
    )
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
    positive_weight = (len(y) - y.sum()) / y.sum()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 4096):
            index = order[start : start + 4096]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                head(x[index]).squeeze(-1), y[index], pos_weight=positive_weight
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    stats = {"questions": len(features), "tokens": len(y), "answer_tokens": int(y.sum()), "final_loss": loss.item()}
    with torch.no_grad():
        return (lambda states: head((states.float() - mean) / std).squeeze(-1)), stats


def main(argv=None):
    options = parse(argv)
    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    torch.manual_seed(options.seed)
    model = ScaleDownForCausalLM.from_generator(
        str(smollm2_path()), num_compressor_layers=5, memory_injection_layer=5, memory_slots="chunk_mean"
    )
    model.eval()
    reader = Reader(model)
    run = {"name": options.name, "command": command, "settings": vars(options)}
    start = time.perf_counter()
    selector = None
    if options.selector_rows > 0:
        train = load_from_disk(options.data)["train"].shuffle(seed=options.seed).select(range(options.selector_rows))
        selector, run["selector"] = fit_selector(
            reader, train.to_list(), options.selector, options.selector_epochs, options.seed
        )
    systems = options.systems or ["chunk_mean", "oracle_states", "oracle_text", "first8_states", "first8_text"]
    systems = systems + (["learned_states"] if selector else []) + ["raw_top1"]
    matches = {name: [] for name in systems}
    hits = []
    kwargs = {"max_new_tokens": 32, "do_sample": False}
    rows = load_from_disk(options.eval_data)["test"].to_list()[: options.eval_questions]
    for row in rows:
        question, document, answers = row["question"], row["documents"][0], row["gold_answers"]
        ((states, offsets),) = reader([question], [document])
        target = answer_tokens(document, offsets, answers)
        if target is None:
            continue  # the top-1 document holds no gold answer: nothing to select
        oracle = window(int(target.argmax()), len(offsets))
        first = list(range(min(8, len(offsets))))
        answers_by = {}
        with torch.no_grad():
            for name in systems:
                if name == "chunk_mean":
                    batch = build_compressor_inputs(reader.tokenizer, model.config, [question], [[document]])
                    memory = model.compress(**batch).memory_embeddings
                    answers_by[name] = model.generate_from_compressed([question], [memory], **kwargs)[0]
                elif name.endswith("_states"):
                    if name == "learned_states":
                        positions = window(int(selector(states).argmax()), len(offsets))
                        hits.append(float(target[positions].sum() > 0))
                    else:
                        positions = oracle if name.startswith("oracle") else first
                    memory = states[positions][None]
                    answers_by[name] = model.generate_from_compressed([question], [memory], **kwargs)[0]
                elif name.endswith("_text"):
                    positions = oracle if name.startswith("oracle") else first
                    text = document[offsets[positions[0]][0] : offsets[positions[-1]][1]]
                    answers_by[name] = model.generate_uncompressed([question], [[text]], **kwargs)[0]
                else:
                    answers_by[name] = model.generate_uncompressed([question], [[document]], **kwargs)[0]
        for name, answer in answers_by.items():
            matches[name].append(float(any(a.lower() in answer.lower() for a in answers if a.strip())))
    run["questions"] = len(matches["raw_top1"])
    run["match"] = {name: round(sum(v) / len(v), 4) for name, v in matches.items()}
    if hits:
        run["learned_window_hit_rate"] = round(sum(hits) / len(hits), 4)
    run["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({k: run[k] for k in ("questions", "match") + (("learned_window_hit_rate",) if hits else ())}))
    path = Path(options.record)
    record = json.loads(path.read_text()) if path.exists() else {"runs": []}
    record["runs"] = [r for r in record["runs"] if r["name"] != run["name"]] + [run]
    path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
