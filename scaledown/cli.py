"""The `scaledown` command line: `demo`, `prepare-data`, `label`, `pretrain`, `train`, `evaluate`, `benchmark`,
`index`, `verify`, `push`."""

import argparse
import json
import sys


def _demo(argv: list[str]) -> int:
    from .demo import DemoSettings, run_demo
    from .training.arguments import ScaleDownParser

    (settings,) = ScaleDownParser((DemoSettings,), prog="scaledown demo").parse_args_and_config(argv)
    if settings.quickstart:
        from .quickstart import run_quickstart

        summary = run_quickstart(output_dir=settings.output_dir, num_compressor_layers=settings.num_compressor_layers)
        print(json.dumps(summary, indent=2))
        return 0 if summary["reloaded_answers_identical"] else 1
    run = run_demo(settings)
    from .evaluation.run import summary_lines

    print("\n".join(["Before training:", *summary_lines(run["eval_before"]), "After training:"]))
    print("\n".join(summary_lines(run["eval_after"])))
    print(json.dumps(run["benchmark"]["per_batch_size"], indent=2))
    print(f"Report: {settings.output_dir}/report.md, model: {run['model_dir']} (loads with AutoModelForCausalLM "
          "and trust_remote_code=True)")  # fmt: skip
    return 0


def _prepare_data(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    from .training.arguments import ScaleDownParser
    from .training.data import PrepareDataArguments, prepare_data, recall_at_k

    parser = ScaleDownParser((PrepareDataArguments,), prog="scaledown prepare-data")
    (args,) = parser.parse_args_and_config(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset = prepare_data(
        args.source,
        tokenizer,
        args.output,
        doc_max_length=args.doc_max_length,
        num_train_documents=args.num_train_documents,
        num_eval_documents=args.num_eval_documents,
        held_out_fraction=args.held_out_fraction,
        max_train_questions=args.max_train_questions,
        max_eval_questions=args.max_eval_questions,
        retrieve=args.retrieve,
        seed=args.seed,
        retriever=args.retriever,
    )
    summary = {
        name: {"questions": len(split), "recall": recall_at_k(split.to_list())} for name, split in dataset.items()
    }
    print(json.dumps({"output": args.output, "splits": summary}, indent=2))
    return 0


def _label(argv: list[str]) -> int:
    from .configuration_scaledown import ScaleDownConfig
    from .training.arguments import ScaleDownParser
    from .training.labeling import LabelArguments, label_dataset

    (args,) = ScaleDownParser((LabelArguments,), prog="scaledown label").parse_args_and_config(argv)

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
        overwrite=args.overwrite,
        max_rows=args.max_rows,
    )
    print(json.dumps({"output": args.output, "splits": {k: len(v) for k, v in dataset.items()}}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.run import evaluate_folder, summary_lines

    report = evaluate_folder(
        args.model,
        args.data,
        split=args.split,
        max_questions=args.max_questions,
        output=args.output,
        batch_size=args.batch_size,
        num_documents=args.num_documents,
        with_baseline=not args.no_baseline,
        with_document_gain=args.document_gain,
        max_new_tokens=args.max_new_tokens,
        baseline=args.baseline,
        prune_rate=args.prune_rate,
        sentence_encoder=args.sentence_encoder,
        offline_model=args.offline_model,
    )
    print("\n".join(summary_lines(report)))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from .evaluation.benchmark import resolve_dtype, run_benchmark, run_user_benchmark

    if args.path == "user":
        result = run_user_benchmark(
            args.model,
            generator=args.generator,
            batch_sizes=args.batch_sizes,
            dtypes=[resolve_dtype(d, args.device) for d in args.dtypes],
            repetitions=args.repetitions,
            num_documents=args.num_documents,
            query_tokens=args.query_tokens,
            new_tokens=args.new_tokens,
            device=args.device,
            output_dir=args.output_dir,
            extra_systems=args.systems,
            offline_model=args.offline_model,
        )
        summary = {
            dtype: {b: {k: v for k, v in e.items() if k != "all_runs"} for b, e in per_batch.items()}
            for dtype, per_batch in result["per_dtype"].items()
        }
        print(json.dumps(summary, indent=2))
        return 0
    result = run_benchmark(
        args.model,
        batch_sizes=args.batch_sizes,
        repetitions=args.repetitions,
        num_documents=args.num_documents,
        query_tokens=args.query_tokens,
        new_tokens=args.new_tokens,
        output_dir=args.output_dir,
        dtype=args.dtype,
        device=args.device,
    )
    print(json.dumps(result["summary"], indent=2))
    return 0


def _index(args: argparse.Namespace) -> int:
    from .modeling_scaledown import ScaleDownForCausalLM
    from .store import build_store
    from .training.pretraining import read_texts

    model = ScaleDownForCausalLM.from_pretrained(args.model)
    texts = read_texts(args.corpus, text_column=args.text_column)
    store = build_store(model, texts, args.output, batch_size=args.batch_size, shard_size=args.shard_size)
    print(json.dumps({"output": args.output, "documents": len(store), "fingerprint": store.fingerprint}, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verification import verify_folder

    report = verify_folder(args.folder, checksums=not args.no_checksums)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def _push(args: argparse.Namespace) -> int:
    from .hub_cards import push_folder

    info = push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        report=args.report,
    )
    print(info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaledown", description="OSCAR-style compressed RAG with transformers.")
    parser.add_argument(
        "--debug", action="store_true", help="On failure, raise with the traceback (default: one line, exit status 2)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    # demo, prepare-data, label, train and pretrain parse their own arguments (`ScaleDownParser`: a JSON/YAML file
    # then --key value overrides); `scaledown COMMAND --help` lists them.
    for name, text in (
        ("demo", "The whole method end to end, offline (`scaledown demo --help`; --quickstart: one minute)."),
        ("prepare-data", "QA data -> chunked collection -> BM25 top-k -> dataset on disk."),
        ("label", "Teacher answers and relevance scores (resumable)."),
    ):
        commands.add_parser(name, help=text, add_help=False).set_defaults(func=None)

    evaluate = commands.add_parser("evaluate", help="Compressed model vs uncompressed base generator, side by side.")
    evaluate.add_argument("--model", required=True, help="ScaleDown model folder or hub id.")
    evaluate.add_argument("--data", required=True, help="Dataset folder (prepare-data / label).")
    evaluate.add_argument("--split", default="test", help="Held-out split.")
    evaluate.add_argument("--max-questions", type=int, default=None, help="Evaluate the first N questions.")
    evaluate.add_argument("--num-documents", type=int, default=10, help="Documents per question (10 in OSCAR).")
    evaluate.add_argument("--batch-size", type=int, default=8, help="Questions per batch.")
    evaluate.add_argument("--max-new-tokens", type=int, default=32, help="Greedy answer length.")
    evaluate.add_argument("--no-baseline", action="store_true", help="Skip the uncompressed baseline.")
    evaluate.add_argument(
        "--document-gain",
        action="store_true",
        help="Also score the gold answers' likelihood with own vs foreign documents: how much of the raw documents' "
        "information the compressed model uses (one more pass over the data per system).",
    )
    evaluate.add_argument(
        "--baseline",
        choices=["prune"],
        default=None,
        help="Also a hard-pruning baseline built here (Provence/LLMLingua style): per document the sentences closest "
        "to the query under a sentence encoder, up to the token budget of the model's compression rate, read as text "
        "by the base generator.",
    )
    evaluate.add_argument("--prune-rate", type=int, default=None, help="Pruning rate (default: the model's).")
    evaluate.add_argument(
        "--sentence-encoder", default=None, help="Sentence encoder folder or hub id (default: all-MiniLM-L6-v2)."
    )
    evaluate.add_argument(
        "--offline-model",
        default=None,
        help="Also an offline ScaleDown model (`query_dependent=False`, trained like --model) on the same rows: "
        "online vs offline compression, each paired against the uncompressed generator.",
    )
    evaluate.add_argument("--output", default=None, help="Write the JSON report here.")
    evaluate.set_defaults(func=_evaluate)

    bench = commands.add_parser("benchmark", help="OSCAR speed protocol: compressed vs uncompressed generation.")
    bench.add_argument("--model", required=True, help="ScaleDown model folder or hub id.")
    bench.add_argument(
        "--path",
        choices=["user", "tuned"],
        default="user",
        help="user: the folder loaded as documented + generate_from_text, against AutoModelForCausalLM + generate on "
        "the raw documents, per --dtypes, with time to first token; tuned: OSCAR's protocol on one --dtype with "
        "explicitly merged adapters and compressor/generator split.",
    )
    bench.add_argument("--generator", default=None, help="Base generator (default: the folder's generator).")
    bench.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="Dtypes of the user path.")
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="Batch sizes to time.")
    bench.add_argument("--repetitions", type=int, default=3, help="Interleaved repetitions (medians reported).")
    bench.add_argument("--num-documents", type=int, default=10, help="Documents per query (128 tokens each).")
    bench.add_argument("--query-tokens", type=int, default=128, help="Query length in tokens.")
    bench.add_argument("--new-tokens", type=int, default=32, help="Generated tokens.")
    bench.add_argument(
        "--systems",
        nargs="*",
        choices=["offline", "pruned"],
        default=[],
        help="User path: also time offline compression (answers from stored vectors, and with compression) and the "
        "sentence-pruning baseline, side by side with ScaleDown and the uncompressed generator.",
    )
    bench.add_argument(
        "--offline-model",
        default=None,
        help="Offline model folder for --systems offline (default: --model's weights read offline: same cost).",
    )
    bench.add_argument("--output-dir", default="outputs/benchmark", help="JSON + PNG go here.")
    bench.add_argument("--dtype", default="auto",
                       help="Tuned path: auto (bfloat16 where the device computes in it natively, else float32), or a "
                            "dtype name such as float32 or bfloat16.")  # fmt: skip
    bench.add_argument("--device", default=None, help="e.g. cuda (default: cpu).")
    bench.set_defaults(func=_benchmark)

    index = commands.add_parser(
        "index",
        help="Compress a corpus once with an offline model (query_dependent=False) into a resumable store on disk.",
    )
    index.add_argument("--model", required=True, help="Offline ScaleDown model folder or hub id.")
    index.add_argument(
        "--corpus", nargs="+", required=True,
        help="Texts: a prepare-data folder (its documents), .txt files, SQuAD .json files or dataset folders.",
    )  # fmt: skip
    index.add_argument("--text-column", default="documents", help="Column of a dataset folder holding the texts.")
    index.add_argument("--output", required=True, help="Store folder (created, or completed when resumed).")
    index.add_argument("--batch-size", type=int, default=16, help="Documents per compressor call.")
    index.add_argument("--shard-size", type=int, default=1024, help="Documents per shard (the unit of resumption).")
    index.set_defaults(func=_index)

    verify = commands.add_parser(
        "verify",
        help="Check a saved folder's weights (shapes, dtypes, names) and tokenizers against its configuration, "
        "without loading the weights; prints each weight file's SHA-256. Exit status 1 when something is wrong.",
    )
    verify.add_argument("folder", help="Saved ScaleDown folder.")
    verify.add_argument("--no-checksums", action="store_true", help="Skip the SHA-256 of the weight files.")
    verify.set_defaults(func=_verify)

    push = commands.add_parser("push", help="Upload a model folder (weights, code, tokenizers, card) in one commit.")
    push.add_argument("folder", help="Saved ScaleDown folder.")
    push.add_argument("repo_id", help="Hub repository, e.g. org/scaledown-mistral-8l.")
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument("--revision", default=None, help="Branch to push to.")
    push.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    push.add_argument("--commit-message", default=None, help="Commit message.")
    push.add_argument(
        "--report",
        default=None,
        help="run.json of the run, or the JSON of `scaledown evaluate --output` (its three-way table), to (re)write "
        "the model card.",
    )
    push.set_defaults(func=_push)

    train = commands.add_parser(
        "train",
        help="Distil a ScaleDown model: [CONFIG.json|.yaml] [--device auto|cpu|trainium] then --key value overrides "
        "(`scaledown train --help`).",
        add_help=False,
    )
    train.set_defaults(func=None)
    pretrain = commands.add_parser(
        "pretrain",
        help="Pretrain an encoder / LLM compressor (auto-encoding + continuation): [CONFIG] then --key value "
        "overrides (`scaledown pretrain --help`).",
        add_help=False,
    )
    pretrain.set_defaults(func=None)
    return parser


def _dispatch(argv: list[str]) -> int:
    own_parsers = {"demo": _demo, "prepare-data": _prepare_data, "label": _label}
    if argv and argv[0] in own_parsers:
        return own_parsers[argv[0]](argv[1:])
    if argv and argv[0] == "train":
        from .training.run import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "pretrain":
        from .training.run import pretrain_main

        return pretrain_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


def error_line(error: BaseException) -> str:
    """One line for a failed command: the message alone for the errors that describe bad input (`ValueError`,
    `OSError`: what is wrong and how to fix it), the exception's type in front of any other."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {message}"


def main(argv: list[str] | None = None) -> int:
    """Run one command. A failure prints one line, `scaledown COMMAND: error: ...`, and exits with status 2; with
    `--debug` (anywhere on the command line) it raises, traceback included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return _dispatch(argv)
    except Exception as error:
        if debug:
            raise
        command = f"scaledown {argv[0]}" if argv else "scaledown"
        print(f"{command}: error: {error_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
