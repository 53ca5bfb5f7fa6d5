"""`scaledown train`: build (or load) a ScaleDown model and distil it on a labelled dataset with `ScaleDownTrainer`.

Arguments come from `HfArgumentParser` over [`ModelArguments`], [`DataArguments`] and
[`ScaleDownTrainingArguments`]: a JSON or YAML file, then command-line overrides (`--key value`). `--device trainium`
(or `device: trainium` in the file) trains on AWS Trainium with `ScaleDownNeuronTrainer` and
`ScaleDownNeuronTrainingArguments` (needs optimum-neuron and the Neuron SDK); `--device cpu` forces the CPU; the
default (`auto`) lets the Trainer pick CUDA, XLA, MPS or the CPU.
"""

import json
import os
import sys
from dataclasses import dataclass, field

from transformers import set_seed
from transformers.utils import logging

from .arguments import ScaleDownParser, ScaleDownTrainingArguments, read_config_file


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
    query_dependent: bool = field(
        default=True,
        metadata={"help": "Online compression (the compressor reads the query); false: offline, documents alone."},
    )
    memory_injection_layer: int = field(
        default=-1,
        metadata={
            "help": "Generator layer where the memory enters: -1 = the compressor's depth for an N-layers compressor "
            "(else 0), 0 = input embeddings (OSCAR), k = the residual stream at layer k."
        },
    )
    memory_slots: str = field(
        default="chunk_attention",
        metadata={
            "help": "chunk_attention (learned pooling of each document chunk), chunk_mean, tokens (states at "
            "appended <MEM_i> tokens, OSCAR) or span (the states of the document tokens a learned selector finds most "
            "answer-like; fitted before training, see `selector_epochs`)."
        },
    )
    span_windows: int = field(
        default=1,
        metadata={
            "help": "Span slots: each document's memory is this many windows of `num_memory_tokens / span_windows` "
            "consecutive tokens (1: one window; `num_memory_tokens`: the most answer-like single tokens)."
        },
    )
    use_lora: bool = field(default=True, metadata={"help": "LoRA on the generator (else the generator is frozen)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (`lora_config['r']`)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (`lora_config['lora_alpha']`)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (`lora_config['lora_dropout']`)."})
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
    selector_dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Span slots: a prepared dataset (its `train_split`; labels not needed) whose answer spans fit the "
            "span selector, e.g. more questions than training labels (default: the training rows)."
        },
    )
    selector_max_samples: int | None = field(
        default=None, metadata={"help": "Keep the first N rows for the span selector's fit."}
    )

    def __post_init__(self):
        if not self.dataset_dir:
            raise ValueError("`dataset_dir` is required.")
        self.dataset_dir = os.path.expanduser(self.dataset_dir)
        if self.selector_dataset_dir:
            self.selector_dataset_dir = os.path.expanduser(self.selector_dataset_dir)


@dataclass
class PretrainingDataArguments:
    """Plain text for `scaledown pretrain` (see `scaledown.training.pretraining`)."""

    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Text sources: .txt files, SQuAD .json files, dataset folders or hf:NAME[:CONFIG] (default: the "
            "passages of the shipped SQuAD sample)."
        },
    )
    text_column: str = field(
        default="text",
        metadata={"help": "Text column of dataset sources (a column of lists, e.g. `documents`, gives each text)."},
    )
    data_splits: list[str] | None = field(
        default=None,
        metadata={"help": "Only these splits of dataset sources (e.g. `train`, to keep held-out articles unseen)."},
    )
    autoencoding_ratio: float = field(
        default=0.5, metadata={"help": "Share of auto-encoding rows; the rest are continuation rows."}
    )
    continuation_length: int | None = field(
        default=None, metadata={"help": "Continuation target tokens (default: doc_max_length)."}
    )
    held_out_rows: int = field(
        default=32, metadata={"help": "Rows held out to measure reconstruction and perplexity before and after."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})

    def __post_init__(self):
        if not 0.0 <= self.autoencoding_ratio <= 1.0:
            raise ValueError(f"`autoencoding_ratio` must be in [0, 1], got {self.autoencoding_ratio}.")
        if self.held_out_rows < 0:
            raise ValueError(f"`held_out_rows` must be >= 0, got {self.held_out_rows}.")


DEVICES = ("auto", "cpu", "trainium")


def _pop_device(argv: list[str], default: str) -> str:
    """Remove `--device X` / `--device=X` from `argv` and return X (or `default`)."""
    device = default
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--device="):
            device = arg.split("=", 1)[1]
            del argv[i]
            break
    if device not in DEVICES:
        raise ValueError(f"`--device` must be one of {DEVICES}, got {device!r}.")
    return device


def parse_args(argv: list[str] | None = None, data_class=DataArguments):
    """`[CONFIG.json|CONFIG.yaml] [--device auto|cpu|trainium] [--key value ...]`: file values, overridden by the
    command line. Returns `(ModelArguments, DataArguments, training arguments)`; the training arguments are
    `ScaleDownNeuronTrainingArguments` for `--device trainium`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = argv.pop(0) if argv and argv[0].endswith((".json", ".yaml", ".yml")) else None
    defaults = read_config_file(path) if path else {}
    device = _pop_device(argv, defaults.pop("device", "auto"))
    arguments_class = ScaleDownTrainingArguments
    if device == "trainium":
        from .neuron_trainer import ScaleDownNeuronTrainingArguments  # ImportError saying what to install

        arguments_class = ScaleDownNeuronTrainingArguments
    elif device == "cpu":
        argv.append("--use_cpu=true")
    parser = ScaleDownParser((ModelArguments, data_class, arguments_class))
    return parser.parse(argv, defaults, source=str(path))


def resolve_memory_injection_layer(layer: int, compressor_type: str, num_compressor_layers: int) -> int:
    """The CLI's and the demo's `memory_injection_layer`: `-1` means the compressor's depth for an N-layers compressor
    (its output is the generator's residual stream at that layer), else 0."""
    if layer >= 0:
        return layer
    return num_compressor_layers if compressor_type == "n_layers" else 0


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
        "query_dependent": model_args.query_dependent,
        "memory_injection_layer": resolve_memory_injection_layer(
            model_args.memory_injection_layer, model_args.compressor_type, model_args.num_compressor_layers
        ),
        "memory_slots": model_args.memory_slots,
        "span_windows": model_args.span_windows,
        "use_lora": model_args.use_lora,
        "lora_config": {
            "r": model_args.lora_r,
            "lora_alpha": model_args.lora_alpha,
            "lora_dropout": model_args.lora_dropout,
        },
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

    trainer_class = ScaleDownTrainer
    if not isinstance(training_args, ScaleDownTrainingArguments):  # --device trainium
        from .neuron_trainer import ScaleDownNeuronTrainer as trainer_class
    set_seed(training_args.seed)
    dataset = load_from_disk(data_args.dataset_dir)  # first: a wrong split fails before a model loads
    if not isinstance(dataset, DatasetDict):
        dataset = DatasetDict({data_args.train_split: dataset})
    for split in (data_args.train_split, data_args.eval_split):
        if split is not None and split not in dataset:
            raise ValueError(f"{data_args.dataset_dir} has no split {split!r} (has {list(dataset)}).")
    model = build_model(model_args)
    train = dataset[data_args.train_split]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    evaluation = dataset[data_args.eval_split] if data_args.eval_split else None
    _fit_span_selector(model, train, model_args, data_args, training_args)
    trainer = trainer_class(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_state()
        with open(os.path.join(training_args.output_dir, "train_results.json"), "w") as handle:
            json.dump(result.metrics, handle, indent=2)
    return result


def _fit_span_selector(model, train, model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """Span slots: fit the span selector on answer spans before training (`selector_epochs`; by default only for a
    model built from a generator, never for a resumed run) and write its record to `selector_results.json`."""
    from .selection import train_slot_selector

    epochs = training_args.selector_epochs
    if epochs is None:
        epochs = 4 if model_args.model_name_or_path is None and not training_args.resume_from_checkpoint else 0
    if getattr(model, "slot_selector", None) is None or epochs == 0:
        return
    rows = train
    if data_args.selector_dataset_dir:
        from datasets import DatasetDict, load_from_disk

        source = load_from_disk(data_args.selector_dataset_dir)
        if isinstance(source, DatasetDict):
            if data_args.train_split not in source:
                raise ValueError(f"{data_args.selector_dataset_dir} has no split {data_args.train_split!r}.")
            source = source[data_args.train_split]
        rows = source
    if data_args.selector_max_samples is not None:
        rows = rows.select(range(min(data_args.selector_max_samples, len(rows))))
    if isinstance(training_args, ScaleDownTrainingArguments) and training_args.device.type == "cuda":
        model.to(training_args.device)  # the Trainer would move it next anyway; the fit runs there too
    # Every process fits the same selector (same rows, same seed), so that all ranks start training alike.
    record = train_slot_selector(
        model, rows, epochs=epochs, learning_rate=training_args.selector_learning_rate, seed=training_args.seed
    )
    logger.warning(f"Span selector: window hit rate {record['window_hit_rate']} on {record['pairs']} answer spans.")
    if getattr(training_args, "process_index", 0) == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "selector_results.json"), "w") as handle:
            json.dump(record, handle, indent=2)


def run_pretraining(
    model_args: ModelArguments, data_args: PretrainingDataArguments, training_args: ScaleDownTrainingArguments
) -> dict:
    """Pretrain compressor + projector (and the generator's LoRA adapters, as configured) with auto-encoding and
    continuation, measure both tasks on held-out rows before and after, save the model and
    `pretraining_eval.json` to `training_args.output_dir`. Returns that report."""
    from datasets import Dataset

    from ..evaluation.pretraining import evaluate_pretraining  # the command reports both: training, then scores
    from .pretraining import PretrainingCollator, default_sources, make_pretraining_rows, read_texts, split_rows
    from .trainer import ScaleDownTrainer

    set_seed(training_args.seed)
    model = build_model(model_args)
    texts = read_texts(data_args.data or default_sources(), data_args.text_column, data_args.data_splits)
    rows = make_pretraining_rows(
        texts,
        model.compressor_tokenizer,
        model.config.doc_max_length,
        data_args.continuation_length,
        data_args.autoencoding_ratio,
        seed=training_args.seed,
    )
    train, held_out = split_rows(rows, data_args.held_out_rows, seed=training_args.seed)
    if data_args.max_train_samples is not None:
        train = train[: data_args.max_train_samples]
    if not train:
        raise ValueError("No pretraining text: give `--data` sources with some text in them.")
    logger.warning(f"Pretraining on {len(train)} chunks ({len(held_out)} held out) from {len(texts)} passages.")
    report = {"train_rows": len(train), "held_out_rows": len(held_out)}
    if held_out:
        report["before"] = evaluate_pretraining(model, held_out)
    collator = PretrainingCollator.from_model(
        model,
        max_answer_length=max(model.config.doc_max_length, data_args.continuation_length or 0) + 8,
        pad_to_fixed_length=training_args.pad_to_fixed_length,
        max_prompt_length=training_args.max_prompt_length,
    )
    trainer = ScaleDownTrainer(
        model=model, args=training_args, train_dataset=Dataset.from_list(train), data_collator=collator
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    report["train"] = {**result.metrics, "global_step": result.global_step, "log_history": trainer.state.log_history}
    if held_out:
        report["after"] = evaluate_pretraining(model, held_out)
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "pretraining_eval.json"), "w") as handle:
            json.dump(report, handle, indent=2)
    return report


def main(argv: list[str] | None = None) -> int:
    run_training(*parse_args(argv))
    return 0


def pretrain_main(argv: list[str] | None = None) -> int:
    report = run_pretraining(*parse_args(argv, data_class=PretrainingDataArguments))
    for stage in ("before", "after"):
        if stage in report:
            metrics = {k: v for k, v in report[stage].items() if k != "examples"}
            logger.warning(f"{stage} pretraining: {metrics}")
    return 0
