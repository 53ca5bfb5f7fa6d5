"""The demo's model and question-answering step, shared by the probes that reproduce them: SmolLM2 + 5-layer
compressor, span slots at layer 5, LoRA, relevance head (`scaledown demo`'s defaults); batch 4, five documents per
row, gold answers, the answer's document first, compressor frozen, no auto-encoding rows."""

import json

from transformers import set_seed

from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments


def demo_model(seed: int = 0, **config) -> ScaleDownForCausalLM:
    """A fresh demo model (initialised with `seed`), with extra `ScaleDownConfig` arguments."""
    set_seed(seed)
    return ScaleDownForCausalLM.from_generator(
        str(smollm2_path()), num_compressor_layers=5, enable_reranking=True, memory_injection_layer=5,
        memory_slots="span", **config,
    )  # fmt: skip


def demo_trainer(model, rows, output_dir: str, steps: int) -> ScaleDownTrainer:
    """A trainer with the demo's question-answering arguments, its optimizer created and the model in train mode."""
    training = ScaleDownTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=4, use_cpu=True, save_strategy="no", num_train_documents=5,
        answer_field="gold_answers", answer_document_first=True, freeze_compressor=True, autoencoding_mix=0.0,
        max_steps=steps, report_to=[],
    )  # fmt: skip
    trainer = ScaleDownTrainer(model=model, args=training, train_dataset=rows)
    trainer.create_optimizer()
    model.train()
    return trainer


def report(result: dict, args) -> None:
    """Print a probe's result and, with `--output`, write it with the command's arguments."""
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"command": vars(args), **result}, handle, indent=1)
