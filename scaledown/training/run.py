"""`scaledown train`: build (or load) a ScaleDown model and distil it on a labelled dataset with `ScaleDownTrainer`.

Arguments come from `HfArgumentParser` over [`ModelArguments`], [`DataArguments`] and
[`ScaleDownTrainingArguments`]: a JSON or YAML file, then command-line overrides (`--key value`).
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from .arguments import ScaleDownTrainingArguments


logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model to train: a ScaleDown folder to continue from, or a generator to wrap."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A ScaleDown model (folder or hub id) to continue training."}
    )
    generator: str | None = field(
        default=None, metadata={"help": "Generator causal LM (hub id or folder) to wrap when starting from scratch."}
    )
    compressor_type: str = field(default="n_layers", metadata={"help": "n_layers, encoder or llm."})
    compressor: str | None = field(default=None, metadata={"help": "Encoder / LLM compressor (hub id or folder)."})
    num_compressor_layers: int = field(default=8, metadata={"help": "Generator layers copied into the compressor."})
    doc_max_length: int = field(default=128, metadata={"help": "Document tokens read by the compressor."})
    compression_rate: int = field(default=16, metadata={"help": "Document tokens per memory embedding."})
    query_max_length: int = field(default=64, metadata={"help": "Query tokens read by the compressor."})
    enable_reranking: bool = field(default=False, metadata={"help": "Train the relevance head on teacher scores."})
    use_lora: bool = field(default=True, metadata={"help": "LoRA on the generator (else the generator is frozen)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    dtype: str | None = field(
        default=None, metadata={"help": "Load dtype, e.g. bfloat16 (default: the checkpoint's)."}
    )

    def __post_init__(self):
        for name in ("model_name_or_path", "generator", "compressor"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("~"):
                setattr(self, name, os.path.expanduser(value))
        if (self.model_name_or_path is None) == (self.generator is None):
            raise ValueError("Give exactly one of `model_name_or_path` (a ScaleDown model) and `generator`.")


@dataclass
class DataArguments:
    """The labelled dataset (`scaledown prepare-data` then `scaledown label`)."""

    dataset_dir: str = field(default=None, metadata={"help": "Folder written by `scaledown label` (save_to_disk)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split for the evaluation loss (optional)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})

    def __post_init__(self):
        if not self.dataset_dir:
            raise ValueError("`dataset_dir` is required.")
        self.dataset_dir = os.path.expanduser(self.dataset_dir)


def parse_args(argv: list[str] | None = None):
    """`[CONFIG.json|CONFIG.yaml] [--key value ...]`: file values, overridden by the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, ScaleDownTrainingArguments))
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise FileNotFoundError(f"Training configuration {path} does not exist.")
        if path.suffix == ".json":
            defaults = json.loads(path.read_text())
        else:
            import yaml

            defaults = yaml.safe_load(path.read_text()) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}.")
        parser.set_defaults(**defaults)
        # Values given by the file satisfy required arguments.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)


def build_model(model_args: ModelArguments):
    import torch

    from ..modeling_scaledown import ScaleDownForCausalLM

    load_kwargs = {"dtype": getattr(torch, model_args.dtype)} if model_args.dtype else {}
    if model_args.model_name_or_path:
        return ScaleDownForCausalLM.from_pretrained(model_args.model_name_or_path, **load_kwargs)
    config_kwargs = {
        "compressor_type": model_args.compressor_type,
        "num_compressor_layers": model_args.num_compressor_layers,
        "doc_max_length": model_args.doc_max_length,
        "compression_rate": model_args.compression_rate,
        "query_max_length": model_args.query_max_length,
        "enable_reranking": model_args.enable_reranking,
        "use_lora": model_args.use_lora,
        "lora_r": model_args.lora_r,
        "lora_alpha": model_args.lora_alpha,
        "lora_dropout": model_args.lora_dropout,
    }
    if model_args.compressor_type != "n_layers" and model_args.compressor:
        config_kwargs["compressor_name_or_path"] = model_args.compressor
    return ScaleDownForCausalLM.from_generator(
        model_args.generator,
        compressor=model_args.compressor if model_args.compressor_type != "n_layers" else None,
        generator_kwargs=load_kwargs,
        compressor_kwargs=load_kwargs,
        **config_kwargs,
    )


def run_training(model_args: ModelArguments, data_args: DataArguments, training_args: ScaleDownTrainingArguments):
    """Train and save the final model (loadable with `AutoModelForCausalLM` + `trust_remote_code`) to
    `training_args.output_dir`. Returns the `TrainOutput`."""
    from datasets import DatasetDict, load_from_disk

    from .trainer import ScaleDownTrainer

    set_seed(training_args.seed)
    model = build_model(model_args)
    dataset = load_from_disk(data_args.dataset_dir)
    if not isinstance(dataset, DatasetDict):
        dataset = DatasetDict({data_args.train_split: dataset})
    if data_args.train_split not in dataset:
        raise ValueError(f"{data_args.dataset_dir} has no split {data_args.train_split!r} (has {list(dataset)}).")
    train = dataset[data_args.train_split]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    evaluation = dataset[data_args.eval_split] if data_args.eval_split else None
    trainer = ScaleDownTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_state()
        with open(os.path.join(training_args.output_dir, "train_results.json"), "w") as handle:
            json.dump(result.metrics, handle, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    run_training(*parse_args(argv))
    return 0
