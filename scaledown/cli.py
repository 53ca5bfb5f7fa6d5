"""`scaledown` command line."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
