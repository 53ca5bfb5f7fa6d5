"""Match of several answer-match runs within the window-coverage groups of one selector.

`window_coverage.py --output FILE --compare-windows 1,2` records, per question, whether a document holds the answer
and whether the selector's single window (and its two 4-token windows) keeps an answer token. This joins that file
with the per-question Match of runs recorded by `benchmarks/answer_match.py` on the same rows (and the uncompressed
generator's, from the baseline cache), so that designs can be compared where the window holds the answer and where
it does not:

    python benchmarks/probes/coverage_groups.py COVERAGE.json docs/results/answer-match.json \
        demo-model-indep342 span-prior-sel4-win2-lora150-5docs-top10-seed0-indep342 \
        --eval-key outputs/answer-match/indep342:342:10
"""

import argparse
import json
from pathlib import Path


def group(item: dict) -> str:
    if not any(item["holds"]):
        return "no document holds it"
    if any(item["hits"]):
        return "the window holds it"
    if any(item["windows"].get("2", {}).get("any", [])):
        return "only two 4-token windows would"
    return "a document holds it, no window"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("coverage", help="`window_coverage.py --output` file (with --compare-windows 2).")
    parser.add_argument("record", help="An answer_match.py record file.")
    parser.add_argument("runs", nargs="+", help="Run names in the record, evaluated on the coverage file's rows.")
    parser.add_argument("--baseline-cache", default="outputs/answer-match/baselines.json")
    parser.add_argument("--eval-key", required=True, help="EVAL_DATA:QUESTIONS:DOCUMENTS, as answer_match.py keys it.")
    options = parser.parse_args(argv)
    questions = json.loads(Path(options.coverage).read_text())["questions"]
    runs = {r["name"]: r for r in json.loads(Path(options.record).read_text())["runs"]}
    cache = json.loads(Path(options.baseline_cache).read_text())
    data, *rest = options.eval_key.rsplit(":", 2)
    matches = {"uncompressed": cache[":".join([str(Path(data).resolve()), *rest])]}
    for name in options.runs:
        matches[name] = [answer[2] for answer in runs[name]["answers"]]
    for name, values in matches.items():
        if len(values) != len(questions):
            raise SystemExit(f"{name}: {len(values)} answers for {len(questions)} coverage rows")
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(questions):
        groups.setdefault(group(item), []).append(index)
    summary = {
        name: {
            "questions": len(rows),
            **{k: round(sum(v[i] for i in rows) / len(rows), 4) for k, v in matches.items()},
        }
        for name, rows in groups.items()
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
