"""Where span slots lose the answer: is it in the memory at all, and is it read when it is?

For every held-out question of a labelled dataset and each of its top-k documents, the span selector's chosen window
(`memory_slots="span"`) is compared with the gold answer's tokens (`answer_token_mask`, as the selector is trained).
Joined with an evaluation's per-question Match (`eval_after.json` of `scaledown demo`, or the JSON of `scaledown
evaluate --output`), it splits the questions into: no document holds the answer / a document holds it but no window
does / a window holds it — and Match within each group.

    python benchmarks/probes/window_coverage.py outputs/demo/model outputs/demo/data-labelled \
        [outputs/demo/eval_after.json] [--documents 10] [--split test] [--output FILE]
"""

import argparse
import json

import torch
from datasets import load_from_disk

from scaledown import ScaleDownForCausalLM
from scaledown.modeling_scaledown import _isin, _span_positions
from scaledown.processing_scaledown import build_compressor_inputs
from scaledown.training.collator import answer_token_mask


@torch.no_grad()
def coverage(model, rows, documents: int, compare: tuple[int, ...] = ()) -> list[dict]:
    config, tokenizer = model.config, model.compressor_tokenizer
    memory_ids = torch.tensor(config.compressor_memory_token_ids)
    out = []
    for row in rows:
        docs = row["documents"][:documents]
        answers = row.get("gold_answers") or []
        masks = answer_token_mask(tokenizer, config, [row["question"]], [docs], [answers])
        inputs = build_compressor_inputs(tokenizer, config, [row["question"]], [docs])
        ids = inputs["compressor_input_ids"]
        hidden = model.compressor(
            input_ids=ids, attention_mask=inputs["compressor_attention_mask"], use_cache=False
        ).last_hidden_state
        scores, is_document = model.score_slots(hidden, ids, _isin(ids, memory_ids))
        positions, inside = _span_positions(scores, is_document, config.num_memory_tokens, config.span_windows)
        holds = [bool(mask) for mask in masks]
        hits = [
            bool(mask) and bool(any(p in set(mask) for p, ok in zip(pos.tolist(), ins.tolist()) if ok))
            for mask, pos, ins in zip(masks, positions, inside)
        ]
        item = {"id": row.get("id"), "holds": holds, "hits": hits, "windows": {}}
        for windows in compare:  # the same scores, the memory cut into other windows: any / every answer token kept
            positions, inside = _span_positions(scores, is_document, config.num_memory_tokens, windows)
            kept = [{p for p, ok in zip(pos.tolist(), ins.tolist()) if ok} for pos, ins in zip(positions, inside)]
            item["windows"][windows] = {
                "any": [bool(mask) and bool(set(mask) & chosen) for mask, chosen in zip(masks, kept)],
                "all": [bool(mask) and set(mask) <= chosen for mask, chosen in zip(masks, kept)],
            }
        out.append(item)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("evaluation", nargs="?", help="Per-question records of the same rows (Match per group).")
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--split", default="test")
    parser.add_argument("--output")
    parser.add_argument(
        "--compare-windows", default="", help="Also count hits with these `span_windows`, e.g. 1,2,4,8 (same scores)."
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = ScaleDownForCausalLM.from_pretrained(args.model).eval()
    rows = load_from_disk(args.data)[args.split].to_list()
    records = json.load(open(args.evaluation))["records"] if args.evaluation else [{} for _ in rows]
    if len(records) != len(rows):
        raise SystemExit(f"{len(records)} evaluation records for {len(rows)} rows: not the same questions.")
    compare = tuple(int(w) for w in args.compare_windows.split(",") if w)
    result = coverage(model, rows, args.documents, compare)
    groups = {"no document holds it": [], "a document holds it, no window": [], "a window holds it": []}
    for item, record in zip(result, records):
        item["compressed_match"] = record.get("compressed_match")
        item["uncompressed_match"] = record.get("uncompressed_match")
        key = (
            "a window holds it"
            if any(item["hits"])
            else "a document holds it, no window"
            if any(item["holds"])
            else "no document holds it"
        )
        groups[key].append(item)
    summary = {
        "questions": len(result),
        "documents": args.documents,
        "top1_document_holds": sum(i["holds"][0] for i in result if i["holds"]) / len(result),
        "top1_window_holds": sum(i["hits"][0] for i in result if i["hits"]) / len(result),
        "window_hit_rate_where_document_holds": sum(sum(i["hits"]) for i in result)
        / max(1, sum(sum(i["holds"]) for i in result)),
        "by_windows": {
            windows: {
                "documents_holding_an_answer": sum(sum(i["holds"]) for i in result),
                "documents_any_answer_token_kept": sum(sum(i["windows"][windows]["any"]) for i in result),
                "documents_every_answer_token_kept": sum(sum(i["windows"][windows]["all"]) for i in result),
                "questions_any_answer_token_kept": sum(any(i["windows"][windows]["any"]) for i in result),
            }
            for windows in compare
        },
        "groups": {
            name: {
                "questions": len(items),
                **{
                    key: sum(i[key] for i in items) / max(1, len(items))
                    for key in ("compressed_match", "uncompressed_match")
                    if items and all(i[key] is not None for i in items)
                },
            }
            for name, items in groups.items()
        },
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"command": vars(args), "summary": summary, "questions": result}, handle, indent=1)


if __name__ == "__main__":
    main()
