"""`ScaleDownNeuronTrainer`: optimum-neuron's `NeuronTrainer` (AWS Trainium) with ScaleDown's distillation loss.

Needs optimum-neuron 0.4.5 and the AWS Neuron SDK (torch-neuronx, neuronx-distributed), published on the Neuron package
index: importing this module without them raises an `ImportError` that says what to install (`scaledown.training`
imports it lazily, on first use of `ScaleDownNeuronTrainer`). The loss, the collator, the per-module learning rates and
the loss-term logging are the ones of [`ScaleDownTrainer`] (one implementation: [`DistillationTrainerMixin`]). What
differs in optimum-neuron 0.4.x and is handled here:

- `NeuronTrainer` is not a `transformers.Trainer` subclass and takes `NeuronTrainingArguments`, which are not
  `TrainingArguments` either: [`ScaleDownNeuronTrainingArguments`] adds ScaleDown's fields and defaults to them.
- Its own `compute_loss` calls the model with `reduction="sum"` when `num_items_in_batch` is set; ours replaces it
  (the model also accepts `reduction="sum"`), and its token count is per process, so nothing is rescaled for a
  gather.
- It refuses an evaluation dataset: evaluate the saved model with `scaledown evaluate`.
- XLA compiles one graph per input shape: the trainer pads every batch to fixed shapes
  (`pad_to_fixed_length=True`, the default here), checked against the whole training set before training.
"""

from dataclasses import dataclass, field

from ..import_utils import NEURON_INSTALL_HINT, is_optimum_neuron_available


if not is_optimum_neuron_available():
    raise ImportError(NEURON_INSTALL_HINT)

from optimum.neuron import NeuronTrainer, NeuronTrainingArguments  # noqa: E402

from .arguments import ScaleDownArgumentsMixin  # noqa: E402
from .trainer import DistillationTrainerMixin  # noqa: E402


@dataclass
class ScaleDownNeuronTrainingArguments(ScaleDownArgumentsMixin, NeuronTrainingArguments):
    """`NeuronTrainingArguments` with ScaleDown's fields and OSCAR's defaults (see [`ScaleDownTrainingArguments`]);
    batches are padded to fixed shapes by default, so that the Neuron compiler builds one graph."""

    pad_to_fixed_length: bool = field(
        default=True, metadata={"help": "Pad every batch to fixed shapes (one compiled graph on Trainium)."}
    )


class ScaleDownNeuronTrainer(DistillationTrainerMixin, NeuronTrainer):
    """[`ScaleDownTrainer`]'s distillation training on AWS Trainium through optimum-neuron's `NeuronTrainer`."""

    default_arguments_class = ScaleDownNeuronTrainingArguments

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None, **kwargs):
        if eval_dataset is not None:
            raise ValueError(
                "optimum-neuron's NeuronTrainer does not evaluate: train without `eval_dataset`, then run "
                "`scaledown evaluate` on the saved model."
            )
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset, **kwargs)

    def _num_processes(self) -> int:
        # NeuronTrainer counts `num_items_in_batch` on each process without gathering it.
        return 1
