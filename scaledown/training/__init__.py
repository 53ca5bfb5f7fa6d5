"""Training: data preparation, teacher labels, the distillation loss and the ScaleDown trainers.

Imported lazily so that `import scaledown` needs none of it; the Neuron trainer needs optimum-neuron.
"""

from .arguments import ScaleDownTrainingArguments
from .collator import ScaleDownDataCollator
from .losses import answer_cross_entropy, distillation_kl, distillation_loss, reranking_mse
from .trainer import ScaleDownTrainer, parameter_groups


__all__ = [
    "ScaleDownDataCollator",
    "ScaleDownTrainer",
    "ScaleDownTrainingArguments",
    "answer_cross_entropy",
    "distillation_kl",
    "distillation_loss",
    "parameter_groups",
    "reranking_mse",
]
