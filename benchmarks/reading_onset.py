"""When does the generator start to read the memory? Short runs of the demo model on tasks of rising difficulty.

The learning curve shows the compressed model's document gain (`scaledown evaluate --document-gain`) at 0 up to 1000
SQuAD examples. This script trains the same model (SmolLM2-135M-Instruct, 5-layer compressor, LoRA) for a few hundred
examples on one task and measures, every `--eval-every` steps, how much the memory helps: the answer's NLL per token
with the memory of its own document minus with another one's (nats/token, ± standard error).

Tasks:
- `secret-word`: "The secret word is W." (one short document; 12 words, the question never names it). `--far` puts
  the sentence at the start of a ~110-token document, so the compressor must carry it across the document.
- `autoencoding`: reconstruct a 128-token chunk (SQuADShifts passages) from its 8 memory embeddings.
- `squad`: the learning curve's labelled data (`--labelled FOLDER [EXTRA_TRAIN_FOLDER ...]`), teacher answers
  or gold answers (`--answer-field`), top-`--train-documents` documents; gain on its held-out questions with
  top-`--eval-documents` (10).
`--center-memory` (an experiment, not a model option) subtracts the mean memory vector of 32 training inputs and
rescales to the generator's embedding norm, through a trainable shift and scale.

    python benchmarks/reading_onset.py --task secret-word --steps 100 --output outputs/onset/secret-word.json
    python benchmarks/reading_onset.py --task squad --labelled outputs/learning-curve/data-labelled --steps 100
"""

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from torch import nn
from transformers import TrainerCallback, set_seed

from scaledown import ScaleDownForCausalLM
from scaledown.evaluation.likelihood import document_gain
from scaledown.evaluation.text import mean_and_stderr
from scaledown.offline_weights import smollm2_path
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments
from scaledown.training.losses import answer_nll_per_row
from scaledown.training.pretraining import PretrainingCollator, make_pretraining_rows, read_texts


WORDS = ["Paris", "Berlin", "Amazon", "Hamlet", "Tokyo", "violin", "copper", "Nile", "Mozart", "tiger", "Everest",
         "Jupiter"]  # fmt: skip
SHIFTS = "../shared/data/squad/new_wiki_v1.0.json"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=["secret-word", "autoencoding", "squad"])
    parser.add_argument("--far", action="store_true", help="secret-word: the sentence opens a ~110-token document.")
    parser.add_argument("--labelled", nargs="+", help="squad: labelled folder (train + test), then extra train ones.")
    parser.add_argument("--answer-field", default="teacher_answer", help="squad: teacher_answer or gold_answers.")
    parser.add_argument("--train-documents", type=int, default=5)
    parser.add_argument("--eval-questions", type=int, default=80, help="squad: held-out questions scored.")
    parser.add_argument("--eval-documents", type=int, default=10, help="squad: documents per held-out question.")
    parser.add_argument("--text", default=SHIFTS, help="autoencoding: passages (see `read_texts`).")
    parser.add_argument("--center-memory", action="store_true")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate-generator", type=float, default=5e-4)
    parser.add_argument("--learning-rate-compressor", type=float, default=2e-4)
    parser.add_argument("--lr-scheduler", default="linear", help="linear (recipe: warmup, decay to 0) or constant.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="outputs/reading-onset.json")
    return parser.parse_args()


class CenteredMemory(nn.Module):
    """`(memory + shift) * scale`, both trainable; stands in for the (absent) projector of an N-layers compressor."""

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.shift, self.scale = nn.Parameter(shift.clone()), nn.Parameter(scale.clone())

    def forward(self, memory):
        return (memory + self.shift) * self.scale


def center_memory(model, questions, documents) -> dict:
    compressed = model.compress_documents(questions, documents)
    memory = torch.cat([m.reshape(-1, m.shape[-1]) for m in compressed])
    mean = memory.mean(0)
    target = model.get_input_embeddings().weight.norm(dim=-1).mean()
    scale = target / (memory - mean).norm(dim=-1).mean()
    model.projector = CenteredMemory(-mean, torch.full_like(mean, float(scale)))
    model._set_trainable()
    cosine = nn.functional.normalize(memory, dim=-1)
    return {
        "memory_norm": round(float(memory.norm(dim=-1).mean()), 2),
        "centered_norm": round(float((memory - mean).norm(dim=-1).mean()), 2),
        "embedding_norm": round(float(target), 2),
        "mean_cosine_between_memory_vectors": round(float((cosine @ cosine.T).mean()), 3),
    }


def secret_word_rows(far: bool, text: str) -> list[dict]:
    filler = " " + " ".join(read_texts([text])[0].split()[:85]) if far else ""
    question = "What is the secret word?"
    return [
        {"question": question, "documents": [f"The secret word is {w}.{filler}"], "gold_answers": [w]} for w in WORDS
    ]


@torch.no_grad()
def autoencoding_gain(model, rows: list[dict]) -> dict:
    """Reconstruction NLL per token of each held-out chunk with its own memory minus with the next chunk's."""
    was_training = model.training
    model.eval()
    batch = PretrainingCollator.from_model(model, max_answer_length=136)(rows)
    memory = model.compress(batch["compressor_input_ids"], batch["compressor_attention_mask"]).memory_embeddings
    nll = {}
    for name, slots in (("own", memory), ("foreign", memory.roll(1, 0))):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], memory_embeddings=slots)
        nll[name] = answer_nll_per_row(logits.logits, batch["labels"])
    gain, stderr = mean_and_stderr((nll["foreign"] - nll["own"]).tolist())
    model.train(was_training)
    return {"nll_own_documents": round(float(nll["own"].mean()), 4), "document_gain": round(gain, 4),
            "document_gain_stderr": round(stderr, 4)}  # fmt: skip


def main():
    options = parse()
    set_seed(options.seed)
    squad = options.task == "squad"
    model = ScaleDownForCausalLM.from_generator(str(smollm2_path()), num_compressor_layers=5, enable_reranking=squad)
    collator, eval_documents = None, 1
    if squad:
        labelled = load_from_disk(options.labelled[0])
        train = concatenate_datasets([labelled["train"]] + [load_from_disk(p)["train"] for p in options.labelled[1:]])
        held_out, eval_documents = labelled["test"].to_list()[: options.eval_questions], options.eval_documents
    elif options.task == "secret-word":
        held_out = secret_word_rows(options.far, options.text)
        train = Dataset.from_list([held_out[i % len(held_out)] for i in range(options.steps * options.batch_size)])
        options.answer_field = "gold_answers"
    else:
        rows = make_pretraining_rows(read_texts([options.text]), model.compressor_tokenizer, 128, autoencoding_ratio=1)
        held_out, train = rows[:16], Dataset.from_list(rows[16:])
        collator = PretrainingCollator.from_model(model, max_answer_length=136)
    result = {"settings": vars(options), "train_rows": len(train), "held_out_rows": len(held_out), "points": []}
    if options.center_memory:
        sample = train.select(range(32)).to_list()
        if options.task == "autoencoding":
            sample = [{"question": "", "documents": [r["text"]]} for r in sample]
        result["memory_before_centering"] = center_memory(
            model, [r["question"] for r in sample], [r["documents"][: options.train_documents] for r in sample]
        )

    def measure(step: int, seconds: float):
        if options.task == "autoencoding":
            gain = autoencoding_gain(model, held_out)
        else:
            gain = document_gain(model, held_out, eval_documents, with_baseline=False)["compressed"]
        result["points"].append({"step": step, "examples_seen": step * options.batch_size,
                                 "train_seconds": round(seconds, 1), **gain})  # fmt: skip
        print(json.dumps(result["points"][-1]), flush=True)
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.output).write_text(json.dumps(result, indent=2))

    class Measure(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.began, self.evaluating = time.perf_counter(), 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % options.eval_every == 0 or state.global_step == state.max_steps:
                start = time.perf_counter()
                measure(state.global_step, start - self.began - self.evaluating)
                self.evaluating += time.perf_counter() - start

    measure(0, 0.0)
    args = ScaleDownTrainingArguments(
        output_dir=str(Path(options.output).with_suffix("")) + "-checkpoints",
        max_steps=options.steps,
        per_device_train_batch_size=options.batch_size,
        learning_rate_generator=options.learning_rate_generator,
        learning_rate_compressor=options.learning_rate_compressor,
        lr_scheduler_type=options.lr_scheduler,
        num_train_documents=options.train_documents,
        answer_field=options.answer_field,
        logging_steps=10,
        save_strategy="no",
        seed=options.seed,
        use_cpu=True,
        report_to=[],
    )
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                               callbacks=[Measure()])  # fmt: skip
    trainer.train()
    result["loss"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    Path(options.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
