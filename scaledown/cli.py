"""The `scaledown` command line: `demo`, `prepare-data`, `label`, `train`."""

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    summary = run_quickstart(output_dir=args.output_dir, num_compressor_layers=args.num_compressor_layers)
    print(json.dumps(summary, indent=2))
    print(
        "Note: the compressor is untrained, so these answers only show the mechanics. The folder loads anywhere with\n"
        f"  AutoModelForCausalLM.from_pretrained({summary['model_folder']!r}, trust_remote_code=True)"
    )
    return 0 if summary["reloaded_answers_identical"] else 1


def _prepare_data(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from .training.data import prepare_data, recall_at_k

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset = prepare_data(
        args.source,
        tokenizer,
        args.output,
        doc_max_length=args.doc_max_length,
        train_top_k=args.train_top_k,
        eval_top_k=args.eval_top_k,
        held_out_fraction=args.held_out_fraction,
        max_train_questions=args.max_train_questions,
        max_eval_questions=args.max_eval_questions,
        retrieve=args.retrieve,
        seed=args.seed,
    )
    summary = {
        name: {"questions": len(split), "recall": recall_at_k(split.to_list())} for name, split in dataset.items()
    }
    print(json.dumps({"output": args.output, "splits": summary}, indent=2))
    return 0


def _label(args: argparse.Namespace) -> int:
    from .configuration_scaledown import ScaleDownConfig
    from .training.labeling import label_dataset

    config = ScaleDownConfig(doc_max_length=args.doc_max_length, compression_rate=args.compression_rate)
    if args.system_prompt:
        config.system_prompt = args.system_prompt
    dataset = label_dataset(
        args.data,
        args.output,
        args.teacher,
        config=config,
        cross_encoder=args.cross_encoder,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        splits=args.splits,
        with_scores=not args.no_scores,
    )
    print(json.dumps({"output": args.output, "splits": {k: len(v) for k, v in dataset.items()}}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaledown", description="OSCAR-style compressed RAG with transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="Offline quick-start: wrap SmolLM2-135M-Instruct, compress, answer, save and reload as remote code.",
    )
    demo.add_argument("--output-dir", default="outputs/quickstart", help="Where the model folder is written.")
    demo.add_argument(
        "--num-compressor-layers", type=int, default=5, help="Generator layers copied into the compressor."
    )
    demo.set_defaults(func=_demo)

    prep = commands.add_parser("prepare-data", help="QA data -> chunked collection -> BM25 top-k -> dataset on disk.")
    prep.add_argument("--source", action="append", required=True, help="squad:PATH, jsonl:PATH or a path; repeatable.")
    prep.add_argument("--tokenizer", required=True, help="Generator tokenizer (hub id or folder) used for chunking.")
    prep.add_argument("--output", required=True, help="Output folder (datasets save_to_disk, written atomically).")
    prep.add_argument("--doc-max-length", type=int, default=128, help="Tokens per document chunk.")
    prep.add_argument("--train-top-k", type=int, default=5, help="Documents retrieved per training question.")
    prep.add_argument("--eval-top-k", type=int, default=10, help="Documents retrieved per held-out question.")
    prep.add_argument("--held-out-fraction", type=float, default=0.2, help="Share of articles held out.")
    prep.add_argument(
        "--max-train-questions", type=int, default=None, help="Sample at most this many train questions."
    )
    prep.add_argument("--max-eval-questions", type=int, default=None, help="Sample at most this many held-out ones.")
    prep.add_argument("--retrieve", choices=["auto", "pool", "own"], default="auto", help="Retrieval mode.")
    prep.add_argument("--seed", type=int, default=0, help="Seed of the split and the sampling.")
    prep.set_defaults(func=_prepare_data)

    label = commands.add_parser("label", help="Teacher answers and relevance scores (resumable).")
    label.add_argument("--data", required=True, help="Folder written by prepare-data.")
    label.add_argument("--output", required=True, help="Output folder (written atomically at the end).")
    label.add_argument(
        "--teacher", required=True, help="Teacher causal LM (hub id or folder), e.g. the base generator."
    )
    label.add_argument("--cross-encoder", default=None, help="Cross-encoder for relevance scores (else the teacher).")
    label.add_argument("--batch-size", type=int, default=8, help="Questions per teacher batch.")
    label.add_argument("--max-new-tokens", type=int, default=128, help="Teacher answer length.")
    label.add_argument("--splits", nargs="*", default=None, help="Splits to label (default: all).")
    label.add_argument("--doc-max-length", type=int, default=128, help="Document tokens the teacher reads.")
    label.add_argument("--compression-rate", type=int, default=16, help="Only to build a consistent config.")
    label.add_argument("--system-prompt", default=None, help="System prompt (default: ScaleDown's).")
    label.add_argument("--no-scores", action="store_true", help="Skip the relevance scores.")
    label.set_defaults(func=_label)

    train = commands.add_parser(
        "train",
        help="Distil a ScaleDown model: [CONFIG.json|.yaml] then --key value overrides (`scaledown train --help`).",
        add_help=False,
    )
    train.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .training.run import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
