"""Training: data preparation, teacher labels, the distillation loss and the ScaleDown trainers.

Imported lazily so that `import scaledown` needs none of it. `ScaleDownNeuronTrainer` and
`ScaleDownNeuronTrainingArguments` (AWS Trainium) are imported on first access: they need optimum-neuron and the Neuron
SDK, and without them that access raises an `ImportError` saying what to install.
"""

from .arguments import ScaleDownTrainingArguments
from .collator import ScaleDownDataCollator
from .losses import answer_cross_entropy, answer_nll_per_row, distillation_kl, distillation_loss, reranking_mse
from .pretraining import PretrainingCollator, make_pretraining_rows, read_texts
from .trainer import DistillationTrainerMixin, ScaleDownTrainer, parameter_groups, prepare_model_for_training


_NEURON = ("ScaleDownNeuronTrainer", "ScaleDownNeuronTrainingArguments")


def __getattr__(name: str):
    if name in _NEURON:
        from . import neuron_trainer

        return getattr(neuron_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DistillationTrainerMixin",
    "PretrainingCollator",
    "ScaleDownDataCollator",
    "ScaleDownTrainer",
    "ScaleDownTrainingArguments",
    "answer_cross_entropy",
    "answer_nll_per_row",
    "distillation_kl",
    "distillation_loss",
    "make_pretraining_rows",
    "parameter_groups",
    "prepare_model_for_training",
    "read_texts",
    "reranking_mse",
]
