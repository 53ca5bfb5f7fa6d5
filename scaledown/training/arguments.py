"""`ScaleDownTrainingArguments`: `TrainingArguments` with OSCAR's recipe as defaults."""

from dataclasses import dataclass, field, fields
from typing import ClassVar

from transformers import TrainingArguments
from transformers.utils import logging


logger = logging.get_logger(__name__)


@dataclass
class ScaleDownArgumentsMixin:
    """
    The ScaleDown fields and OSCAR's defaults, shared by [`ScaleDownTrainingArguments`] (`transformers.Trainer`) and
    `ScaleDownNeuronTrainingArguments` (optimum-neuron's `NeuronTrainingArguments`, which is not a
    `TrainingArguments` subclass). Put it first among the bases so that its defaults win.
    """

    # Whether the other base still has a `warmup_ratio` field (transformers 5 folds it into `warmup_steps`).
    _base_has_warmup_ratio: ClassVar[bool] = True

    learning_rate: float = field(default=1e-4, metadata={"help": "Fallback learning rate (see the per-module ones)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training set."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps with a linear warmup."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (AdamW in OSCAR)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every dataset column: the collator needs question, documents, answer."}
    )
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation returns the distillation loss only (use `scaledown evaluate`)."}
    )
    learning_rate_generator: float = field(
        default=1e-4, metadata={"help": "Learning rate of the generator's LoRA adapters (OSCAR: 1e-4)."}
    )
    learning_rate_compressor: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of compressor, projector, reranking head and slot scorer (default: OSCAR's, 5e-5 "
            "for an N-layers compressor, 1e-4 for an encoder or LLM compressor)."
        },
    )
    freeze_generator: bool = field(
        default=False,
        metadata={
            "help": "Keep the generator's LoRA adapters fixed in this run (only the compressor side learns): after an "
            "auto-encoding warm-up, the loss can then only fall through the memory."
        },
    )
    freeze_compressor: bool = field(
        default=False,
        metadata={
            "help": "Keep the memory path (compressor, projector, slot scorer) fixed in this run: the generator's "
            "adapters (and the reranking head and span selector, when on) learn. E.g. after an auto-encoding "
            "warm-up. With `freeze_generator` too, only those heads learn."
        },
    )
    reranking_loss_weight: float = field(
        default=0.05, metadata={"help": "Weight of the reranking MSE in the distillation loss (OSCAR: 0.05)."}
    )
    kl_weight: float = field(
        default=0.0, metadata={"help": "Weight of a token-level KL to teacher logits, when batches carry them."}
    )
    kl_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the KL term."})
    raw_document_teacher: bool = field(
        default=False,
        metadata={
            "help": "Distil from the base generator (adapters off) reading the documents as text, computed online: "
            "the KL term (`kl_weight`) takes its answer logits and `hidden_distillation_weight` its hidden states."
        },
    )
    hidden_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the cosine distance between the model's and the raw-document teacher's hidden states "
            "at the shared question and answer positions, in the generator layers from `memory_injection_layer` on "
            "(needs `raw_document_teacher`)."
        },
    )
    answer_field: str = field(
        default="teacher_answer",
        metadata={"help": "Dataset column with the target answer (teacher_answer, gold_answers)."},
    )
    autoencoding_mix: float = field(
        default=0.0,
        metadata={
            "help": "Share of training rows turned into auto-encoding rows of their top document (the compressor "
            "reads it without the query, the generator reconstructs it from the memory): keeps the memory read "
            "while the generator learns to answer. 0 = OSCAR's recipe."
        },
    )
    autoencoding_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of each reconstructed token of an auto-encoding row in the cross-entropy, an answer token "
            "weighing 1 (the loss is normalised by the weighted token count). A 128-token reconstruction otherwise "
            "outweighs a ~5-token answer ~25 to 1; e.g. 0.05 gives both rows about the same say. 1 = every token "
            "alike."
        },
    )
    slot_selection_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": 'Weight of the span selector\'s loss (`memory_slots="span"`; batches need `gold_answers`): the '
            "negative log-probability of the answer's document tokens under the selector."
        },
    )
    selector_epochs: int | None = field(
        default=None,
        metadata={
            "help": 'Span slots (`memory_slots="span"`): epochs of the span selector\'s fit on the answer spans of '
            "the training questions (`gold_answers`), the compressor fixed, before training starts (see "
            "`scaledown.training.selection.train_slot_selector`). Default: 4 for a model built from a generator, 0 "
            "(keep its selector) for a loaded ScaleDown model or a resumed run."
        },
    )
    selector_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the span selector's fit."})
    answer_document_first: bool = field(
        default=False,
        metadata={
            "help": "Put each training row's first document containing a gold answer on top (rows need "
            "`gold_answers`): with the top document read, the memory is worth reading in every such row. False = "
            "retrieval order (OSCAR)."
        },
    )
    num_train_documents: int = field(default=5, metadata={"help": "Top documents per query used in training."})
    max_answer_length: int = field(default=128, metadata={"help": "Answer tokens kept as targets."})
    pad_to_fixed_length: bool = field(
        default=False,
        metadata={
            "help": "Pad every batch to fixed shapes (XLA / Trainium: one compiled graph); drops the last incomplete "
            "batch."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Generator prompt + answer length when padding to fixed shapes (default: the training set's "
            "longest row, rounded up to a multiple of 64)."
        },
    )

    def __post_init__(self):
        for name in ("learning_rate_generator", "learning_rate_compressor"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value}.")
        if self.reranking_loss_weight < 0:
            raise ValueError(f"`reranking_loss_weight` must be >= 0, got {self.reranking_loss_weight}.")
        if self.kl_weight < 0:
            raise ValueError(f"`kl_weight` must be >= 0, got {self.kl_weight}.")
        if self.selector_epochs is not None and self.selector_epochs < 0:
            raise ValueError(f"`selector_epochs` must be >= 0, got {self.selector_epochs}.")
        if self.selector_learning_rate <= 0:
            raise ValueError(f"`selector_learning_rate` must be positive, got {self.selector_learning_rate}.")
        if self.slot_selection_loss_weight < 0:
            raise ValueError(f"`slot_selection_loss_weight` must be >= 0, got {self.slot_selection_loss_weight}.")
        if self.hidden_distillation_weight < 0:
            raise ValueError(f"`hidden_distillation_weight` must be >= 0, got {self.hidden_distillation_weight}.")
        if self.hidden_distillation_weight > 0 and not self.raw_document_teacher:
            raise ValueError("`hidden_distillation_weight` needs `raw_document_teacher=True` (the teacher's states).")
        if self.kl_temperature <= 0:
            raise ValueError(f"`kl_temperature` must be positive, got {self.kl_temperature}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio}.")
        if not 0.0 <= self.autoencoding_mix <= 1.0:
            raise ValueError(f"`autoencoding_mix` must be in [0, 1], got {self.autoencoding_mix}.")
        if self.autoencoding_loss_weight < 0:
            raise ValueError(f"`autoencoding_loss_weight` must be >= 0, got {self.autoencoding_loss_weight}.")
        if self.num_train_documents < 1:
            raise ValueError(f"`num_train_documents` must be >= 1, got {self.num_train_documents}.")
        if self.max_answer_length < 1:
            raise ValueError(f"`max_answer_length` must be >= 1, got {self.max_answer_length}.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"`max_prompt_length` must be >= 1, got {self.max_prompt_length}.")
        if self.pad_to_fixed_length:
            self.dataloader_drop_last = True  # a smaller last batch would be one more shape to compile
        if self.remove_unused_columns:
            raise ValueError("`remove_unused_columns` must stay False: the collator reads raw text columns.")
        if self.report_to is None or self.report_to == "all":
            self.report_to = "none"  # no experiment tracker unless asked for by name
        if not self._base_has_warmup_ratio and not self.warmup_steps:
            # transformers 5 folds the ratio into `warmup_steps` (a float below 1 is a ratio).
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()


@dataclass
class ScaleDownTrainingArguments(ScaleDownArgumentsMixin, TrainingArguments):
    """
    Training arguments of [`ScaleDownTrainer`]. Defaults follow OSCAR: AdamW, linear schedule, warmup 5%, weight decay
    0.1, max grad norm 1.0, one epoch, 5 documents per query, learning rates 1e-4 for the generator's LoRA adapters
    and 5e-5 (N-layers compressor; 1e-4 for an encoder or LLM) for the compressor side, reranking weight 0.05. The
    training policy lives here only, never in the model's configuration; `learning_rate` itself is unused.
    """

    _base_has_warmup_ratio: ClassVar[bool] = "warmup_ratio" in {f.name for f in fields(TrainingArguments)}


# Settings that had other names in earlier releases: old configuration files and command lines still work (warned).
RENAMED_SETTINGS = {
    "train_top_k": "num_train_documents",
    "eval_top_k": "num_eval_documents",
    "train_documents": "num_train_documents",
    "eval_documents": "num_eval_documents",
}


def rename_settings(values: dict, source: str = "the configuration") -> dict:
    """`values` with the [`RENAMED_SETTINGS`] under today's names (a warning names each)."""
    renamed = {}
    for key, value in values.items():
        if key in RENAMED_SETTINGS:
            logger.warning(f"{source}: `{key}` is now `{RENAMED_SETTINGS[key]}`.")
            key = RENAMED_SETTINGS[key]
        renamed[key] = value
    return renamed


class ScaleDownParser:
    """The one argument parser of the `scaledown` commands (`train`, `pretrain`, `label`, `prepare-data`, `demo`):
    `HfArgumentParser` over their dataclasses, fed, as TRL's `TrlParser` does, by an optional JSON/YAML file whose
    values the command line overrides (`[CONFIG.json|.yaml] [--key value ...]`). Every `--key_name` is also accepted
    as `--key-name`; a list option given several times (`--source a --source b`) collects all its values.

    Args:
        dataclass_types: the dataclasses to fill, in order.
        prog (`str`, *optional*): program name shown in `--help`.
    """

    def __init__(self, dataclass_types, prog: str | None = None):
        from transformers import HfArgumentParser

        self.parser = HfArgumentParser(dataclass_types, prog=prog)
        for action in list(self.parser._actions):  # dash spellings of every underscore option
            if action.help and "%" in action.help and "%(" not in action.help:
                action.help = action.help.replace("%", "%%")  # argparse formats help strings with %
            for option in list(action.option_strings):
                dashed = option.replace("_", "-")
                if option.startswith("--") and dashed != option and dashed not in self.parser._option_string_actions:
                    action.option_strings.append(dashed)
                    self.parser._option_string_actions[dashed] = action

    def parse(self, argv: list[str], defaults: dict | None = None, source: str = "the configuration"):
        """Fill the dataclasses from `defaults` (e.g. a file's values, checked against the known options) overridden
        by `argv`. Returns a tuple of dataclass instances."""
        known = {action.dest for action in self.parser._actions}
        argv = [self._renamed_option(arg, known) for arg in argv]
        if defaults:
            defaults = rename_settings(defaults, source)
            unknown = sorted(set(defaults) - known)
            if unknown:
                raise ValueError(f"{source}: unknown settings {unknown}.")
            self.parser.set_defaults(**defaults)
            for action in self.parser._actions:  # values given by the file satisfy required arguments
                if action.dest in defaults:
                    action.required = False
        return self.parser.parse_args_into_dataclasses(args=self._collect_lists(argv))

    def parse_args_and_config(self, argv: list[str]):
        """`[CONFIG.json|.yaml] [--key value ...]` (see the class doc). Returns a tuple of dataclass instances."""
        argv = list(argv)
        path = argv.pop(0) if argv and argv[0].endswith((".json", ".yaml", ".yml")) else None
        return self.parse(argv, read_config_file(path) if path else None, source=str(path))

    @staticmethod
    def _renamed_option(arg: str, known: set[str]) -> str:
        """`--old_name` / `--old-name` of a [`RENAMED_SETTINGS`] entry as today's option (warned)."""
        if not arg.startswith("--"):
            return arg
        option, sep, value = arg[2:].partition("=")
        old = option.replace("-", "_")
        if old in RENAMED_SETTINGS and old not in known:
            logger.warning(f"`--{option}` is now `--{RENAMED_SETTINGS[old]}`.")
            return f"--{RENAMED_SETTINGS[old]}{sep}{value}"
        return arg

    def _collect_lists(self, argv: list[str]) -> list[str]:
        """Merge repeated list options (`nargs="+"`) into one, so that `--source a --source b` keeps both."""
        lists = {o for a in self.parser._actions if a.nargs in ("+", "*") for o in a.option_strings}
        merged, seen = [], {}
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in lists:
                action = self.parser._option_string_actions[arg]
                values = []
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    values.append(argv[i])
                    i += 1
                if action.dest in seen:
                    merged[seen[action.dest]].extend(values)
                else:
                    seen[action.dest] = len(merged)
                    merged.append([arg, *values])
                continue
            merged.append([arg])
            i += 1
        return [token for group in merged for token in group]


def read_config_file(path: str) -> dict:
    """The settings of a JSON or YAML configuration file (a mapping), with a clear error when it is missing."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Configuration file {path} does not exist.")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        import yaml

        values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}.")
    return values
