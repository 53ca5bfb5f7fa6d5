"""`ScaleDownTrainer`: `transformers.Trainer` with OSCAR's distillation loss and per-module learning rates."""

import inspect
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer
from transformers.utils import logging

from .arguments import ScaleDownTrainingArguments
from .collator import ScaleDownDataCollator
from .losses import (
    aligned_suffix_positions,
    distillation_loss,
    first_needed_logit,
    gather_positions,
    weighted_label_count,
)


logger = logging.get_logger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "compressor_input_ids", "compressor_attention_mask")
CHECKPOINT_COMPLETE = "scaledown_checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that was completely written (it holds the completion marker
    written after weights, optimizer, scheduler, RNG and trainer state). Incomplete ones, left by a run killed while
    saving, are renamed `checkpoint-N.incomplete` so that nothing resumes from them."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), path) for path in folder.iterdir() if path.is_dir() and (m := _CHECKPOINT.match(path.name))
    )
    for _, path in reversed(found):
        if (path / CHECKPOINT_COMPLETE).is_file():
            return str(path)
        logger.warning(f"{path} was not completely written (interrupted run): renamed to {path.name}.incomplete.")
        os.replace(path, path.with_name(f"{path.name}.incomplete"))
    return None


def unwrap(model):
    """The ScaleDown model under DDP / accelerate wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _keeps_logits(model, labels: torch.Tensor) -> bool:
    """Whether the generator's forward takes `logits_to_keep` (transformers' causal LMs since 4.50) and the batch
    may change shape with it (not under XLA, where a new number of kept positions would compile a new graph)."""
    if labels.device.type == "xla":
        return False
    generator = getattr(unwrap(model), "generator", None)
    base = generator.get_base_model() if hasattr(generator, "get_base_model") else generator
    return base is not None and "logits_to_keep" in inspect.signature(type(base).forward).parameters


def default_compressor_learning_rate(compressor_type: str) -> float:
    """OSCAR's learning rate of the compressor side: 5e-5 for an N-layers compressor, 1e-4 for an encoder or LLM."""
    return 5e-5 if compressor_type == "n_layers" else 1e-4


def parameter_side(name: str) -> str:
    """`"generator"` for a parameter of the generator (its LoRA adapters), `"reranking_head"` for the relevance
    head and the span selector (readouts of the compressor with losses of their own, trained even while the memory
    path is frozen), `"compressor"` for the memory path (compressor, projector, slot scorer)."""
    name = f".{name}"
    if ".generator." in name:
        return "generator"
    return "reranking_head" if ".rerank_head." in name or ".slot_selector." in name else "compressor"


def frozen_sides(args) -> tuple[str, ...]:
    """The sides of the model a run keeps fixed (`freeze_generator`, `freeze_compressor` of the arguments)."""
    return tuple(side for side in ("generator", "compressor") if getattr(args, f"freeze_{side}", False))


def prepare_model_for_training(model, frozen: tuple[str, ...] = ()) -> int:
    """ScaleDown's training rule, applied by the trainers: the generator's own weights stay fixed and only its active
    LoRA adapters learn (peft's `BaseTunerLayer.set_adapter` marks them), the compressor side (compressor, projector,
    slot scorer) and the reranking head learn fully; the sides named in `frozen` ([`parameter_side`]) learn nothing.
    A model loaded with `from_pretrained` carries no such rule: training it goes through here. Returns how many
    parameters train; raises if none does."""
    model = unwrap(model)
    model.generator.requires_grad_(False)
    if "generator" not in frozen and model.config.use_lora:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.generator.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter(module.active_adapters)
    for name, param in model.named_parameters():
        side = parameter_side(name)
        if side != "generator":
            param.requires_grad_(side not in frozen)
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    if trainable == 0:
        raise ValueError(f"Nothing left to train with {', '.join(frozen) or 'no side'} frozen.")
    return trainable


def parameter_groups(
    model, decay_names, weight_decay: float, lr_generator=None, lr_compressor=None, frozen: tuple[str, ...] = ()
) -> list[dict]:
    """AdamW parameter groups: generator LoRA adapters at `lr_generator` (default 1e-4), compressor + projector and
    the reranking head at `lr_compressor` (default: [`default_compressor_learning_rate`]), each split into decayed /
    non-decayed (biases, norms). The sides named in `frozen` (`"generator"`, `"compressor"`) get no group: they do
    not move, and [`prepare_model_for_training`] stops their gradients."""
    config = unwrap(model).config
    lr_generator = lr_generator or 1e-4
    lr_compressor = lr_compressor or default_compressor_learning_rate(config.compressor_type)
    buckets = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module = parameter_side(name)
        if module in frozen:
            continue
        buckets[(module, name in decay_names)].append(param)
    groups = []
    for (module, decay), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "lr": lr_generator if module == "generator" else lr_compressor,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{module}{'' if decay else '_no_decay'}",
            }
        )
    return groups


class DistillationTrainerMixin:
    """What every ScaleDown trainer shares, whatever its base class (`transformers.Trainer`, optimum-neuron's
    `NeuronTrainer`): the default data collator (checked against the training set under fixed shapes), the
    distillation `compute_loss`, pair counting for the reranking term, per-module learning rates and the logging of
    the loss terms. Put it first among the bases."""

    # `compute_loss` returns a loss already scaled for gradient accumulation (see `distillation_loss`).
    loss_is_scaled_for_ga = True
    default_arguments_class = ScaleDownTrainingArguments

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, **kwargs):
        if args is None:
            args = self.default_arguments_class(output_dir="scaledown_output")
        if data_collator is None and model is not None:
            data_collator = ScaleDownDataCollator.from_model(
                model,
                answer_field=getattr(args, "answer_field", "teacher_answer"),
                num_train_documents=getattr(args, "num_train_documents", 5),
                max_answer_length=getattr(args, "max_answer_length", 128),
                pad_to_fixed_length=getattr(args, "pad_to_fixed_length", False),
                max_prompt_length=getattr(args, "max_prompt_length", None),
                raw_document_teacher=getattr(args, "raw_document_teacher", False),
                autoencoding_mix=getattr(args, "autoencoding_mix", 0.0),
                autoencoding_loss_weight=getattr(args, "autoencoding_loss_weight", 1.0),
                answer_document_first=getattr(args, "answer_document_first", False),
                seed=getattr(args, "seed", 0),
            )
        if isinstance(data_collator, ScaleDownDataCollator) and train_dataset is not None:
            data_collator.fit(train_dataset)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset, **kwargs)
        # Make the Trainer count the label tokens of each accumulated batch (`num_items_in_batch`) and leave our loss
        # unscaled: transformers 4.57 and 5 and optimum-neuron read this flag.
        self.model_accepts_loss_kwargs = True
        prepare_model_for_training(self.model, frozen_sides(self.args))
        self._loss_terms = defaultdict(list)

    def _num_processes(self) -> int:
        """Processes over which the token and pair counts of a batch are gathered."""
        return max(int(getattr(self.accelerator, "num_processes", 1) or 1), 1)

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None:
            model = self.model
            groups = parameter_groups(
                model,
                set(self.get_decay_parameter_names(model)),
                self.args.weight_decay,
                getattr(self.args, "learning_rate_generator", None),
                getattr(self.args, "learning_rate_compressor", None),
                frozen=frozen_sides(self.args),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def get_batch_samples(self, epoch_iterator, num_batches, device, *args, **kwargs):
        """Also count the (query, document) pairs with a teacher score in the accumulated batch (gathered across
        processes), so that the reranking MSE is normalised over the whole batch like the token terms."""
        batch_samples, num_items_in_batch = super().get_batch_samples(
            epoch_iterator, num_batches, device, *args, **kwargs
        )
        if num_items_in_batch is not None and any("label_weights" in b for b in batch_samples):
            # Weighted label tokens (auto-encoding rows weigh `autoencoding_loss_weight`): the loss's normaliser.
            weighted = sum(weighted_label_count(b["labels"], b.get("label_weights")).to(device) for b in batch_samples)
            if self._num_processes() > 1 and getattr(self.args, "average_tokens_across_devices", False):
                weighted = self.accelerator.gather(weighted).sum()
            num_items_in_batch = weighted
        pairs = [(~b["teacher_scores"].isnan()).sum().to(device) for b in batch_samples if "teacher_scores" in b]
        self._num_pairs_in_batch = None
        if pairs:
            total = torch.stack(pairs).sum()  # pairs with a relevance target (no host sync)
            if self._num_processes() > 1:
                total = self.accelerator.gather(total).sum()
            self._num_pairs_in_batch = total
        return batch_samples, num_items_in_batch

    @torch.no_grad()
    def _raw_document_teacher(self, model, inputs, teacher_index: torch.Tensor, want_hidden: bool):
        """The base generator (adapters off) on the raw-document prompts, at the paired positions `teacher_index`
        `(batch, k)`: its logits `(batch, k, vocab)` and, with `want_hidden`, its hidden states (embeddings + every
        layer's output, each `(batch, k, hidden)`)."""
        scaledown = unwrap(model)
        was_training = scaledown.training
        scaledown.eval()  # no dropout in the teacher
        try:
            with scaledown.generator_adapters_disabled():
                decoder = scaledown.generator.get_decoder()
                mask = inputs["teacher_attention_mask"]
                out = decoder(
                    input_ids=inputs["teacher_input_ids"],
                    attention_mask=mask,
                    position_ids=(mask.long().cumsum(1) - 1).clamp(min=0),
                    output_hidden_states=want_hidden,
                    use_cache=False,
                    return_dict=True,
                )
                head = scaledown.generator.get_output_embeddings()
                logits = head(gather_positions(out.last_hidden_state, teacher_index))
        finally:
            scaledown.train(was_training)
        return logits, ([gather_positions(h, teacher_index) for h in out.hidden_states] if want_hidden else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        teacher_scores = inputs.get("teacher_scores")
        teacher_logits = inputs.get("teacher_logits")
        kl_weight = getattr(self.args, "kl_weight", 0.0)
        hidden_weight = getattr(self.args, "hidden_distillation_weight", 0.0)
        online_teacher = "teacher_input_ids" in inputs and (kl_weight > 0 or hidden_weight > 0)
        model_kwargs = {"output_hidden_states": True} if online_teacher and hidden_weight > 0 else {}
        label_weights = inputs.get("label_weights")
        if (
            not return_outputs  # a caller of the outputs (`prediction_step`) gets the logits of every position
            and not online_teacher
            and (teacher_logits is None or kl_weight == 0)
            and _keeps_logits(model, labels)
        ):
            # The cross-entropy reads the logits of the answer positions only: skip the LM head on the prompt (exact).
            start = first_needed_logit(labels)
            model_kwargs["logits_to_keep"] = labels.shape[1] - start
            labels = labels[:, start:]
            label_weights = label_weights[:, start:] if label_weights is not None else None
        outputs = model(**{k: inputs[k] for k in _MODEL_INPUTS if k in inputs}, **model_kwargs)
        config = unwrap(model).config
        positions, student_hidden, teacher_hidden = None, None, None
        if online_teacher:
            student_index, teacher_index, valid = aligned_suffix_positions(
                inputs["input_ids"], inputs["attention_mask"], inputs["teacher_input_ids"],
                inputs["teacher_attention_mask"],
            )  # fmt: skip
            teacher_logits, all_teacher_hidden = self._raw_document_teacher(
                model, inputs, teacher_index, hidden_weight > 0
            )
            # The teacher's side is already gathered: position k of its tensors is the k-th paired position.
            positions = (student_index, torch.arange(student_index.shape[1]).expand_as(student_index), valid)
            if hidden_weight > 0:
                # Outputs of the layers from the injection layer on; the last entry (after the final norm) is left out.
                first = getattr(config, "memory_injection_layer", 0) + 1
                student_hidden = list(outputs.hidden_states[first:-1])
                teacher_hidden = all_teacher_hidden[first:-1]
        weight = getattr(self.args, "reranking_loss_weight", 0.05)
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        num_pairs = getattr(self, "_num_pairs_in_batch", None) if model.training else None
        if num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False):
            # The token count is gathered over processes while DDP averages gradients: scale the token terms back up.
            num_items_in_batch = num_items_in_batch / self._num_processes()
        if num_pairs is not None:
            num_pairs = num_pairs / self._num_processes()  # gathered too
        loss, terms = distillation_loss(
            outputs.logits,
            labels,
            rerank_scores=outputs.rerank_scores,
            teacher_scores=teacher_scores,
            reranking_loss_weight=weight,
            teacher_logits=teacher_logits,
            kl_weight=kl_weight,
            kl_temperature=getattr(self.args, "kl_temperature", 1.0),
            num_items_in_batch=num_items_in_batch,
            num_accumulation_steps=steps if model.training else 1,
            num_pairs_in_batch=num_pairs,
            teacher_positions=positions,
            student_hidden=student_hidden,
            teacher_hidden=teacher_hidden,
            hidden_weight=hidden_weight,
            label_weights=label_weights,
            slot_scores=getattr(outputs, "slot_scores", None),
            slot_answer_mask=inputs.get("slot_answer_mask"),
            slot_selection_weight=getattr(self.args, "slot_selection_loss_weight", 1.0),
        )
        prefix = "" if model.training else "eval_"
        for key, value in terms.items():  # kept on the device until logged: no host sync per step (XLA)
            self._loss_terms[prefix + key].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        training_log = "loss" in logs
        evaluation_log = any(k.startswith("eval_") for k in logs)
        for key in list(self._loss_terms):
            values = self._loss_terms[key]
            if values and (
                (training_log and not key.startswith("eval_")) or (evaluation_log and key.startswith("eval_"))
            ):
                logs[key] = round(torch.stack(values).float().mean().item(), 4)
                values.clear()
        super().log(logs, *args, **kwargs)


class ScaleDownTrainer(DistillationTrainerMixin, Trainer):
    """Trains a [`ScaleDownForCausalLM`] by sentence-level distillation (OSCAR).

    The loss is [`~scaledown.training.losses.distillation_loss`]: cross-entropy on the teacher's answer +
    `reranking_loss_weight` x MSE of the relevance scores against the teacher's (+ an optional KL to teacher logits).
    Its terms are logged as `ce`, `rerank_mse` and `kl`. The data collator defaults to [`ScaleDownDataCollator`] built
    from the model's tokenizers and the arguments. Checkpoints are safetensors with the training arguments as JSON and
    a completion marker; `train(resume_from_checkpoint=True)` resumes from the newest complete one.
    """

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` resumes from the newest *completely written* checkpoint."""
        if resume_from_checkpoint is True or resume_from_checkpoint == "true":
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
            logger.warning(f"Resuming from {resume_from_checkpoint}.")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save(self, output_dir=None, *args, **kwargs):
        """Save as the Trainer does, but the training arguments as JSON instead of a pickle (`training_args.bin`)."""
        super()._save(output_dir, *args, **kwargs)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        pickled = Path(output_dir) / "training_args.bin"
        if self.args.should_save and pickled.exists():
            pickled.unlink()
            (Path(output_dir) / "training_args.json").write_text(self.args.to_json_string())

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            with open(folder / CHECKPOINT_COMPLETE, "w") as handle:
                json.dump({"global_step": self.state.global_step}, handle)
                handle.flush()
                os.fsync(handle.fileno())
