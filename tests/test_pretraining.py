import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from tiny_models import CORPUS, make_generator, make_scaledown

from scaledown.evaluation.pretraining import evaluate_pretraining
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments
from scaledown.training.pretraining import (
    AUTOENCODING,
    CONTINUATION,
    PretrainingCollator,
    make_pretraining_rows,
    read_texts,
    split_rows,
)
from scaledown.training.run import PretrainingDataArguments, parse_args, run_pretraining


TEXTS = [" ".join(CORPUS[:8]), " ".join(reversed(CORPUS[:8])), " ".join(CORPUS[2:8])]


def test_rows_are_consecutive_chunks_with_their_continuation():
    model = make_scaledown(compressor_type="encoder", encoder="modernbert")
    tokenizer = model.compressor_tokenizer
    rows = make_pretraining_rows(TEXTS, tokenizer, chunk_length=16, autoencoding_ratio=0.5, seed=0)
    encoded = tokenizer(TEXTS[0], add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    first = rows[: -(-len(ids) // 16)]
    # Each piece is the characters of its 16 tokens (a chunk may end inside a word: re-tokenising a piece on its own
    # then differs with the trained vocabulary, so the characters are compared).
    assert first[0]["text"] == TEXTS[0][offsets[0][0] : offsets[15][1]]
    assert first[0]["continuation"] == TEXTS[0][offsets[16][0] : offsets[31][1]]
    assert TEXTS[0].startswith(first[0]["text"])  # original characters, not a lower-cased re-spaced decode
    assert first[0]["text"] + " " + first[0]["continuation"] in TEXTS[0]
    assert first[-1]["continuation"] == "" and first[-1]["task"] == AUTOENCODING  # nothing follows it
    tasks = [r["task"] for r in rows if r["continuation"]]
    assert tasks.count(AUTOENCODING) and tasks.count(CONTINUATION)
    only_ae = make_pretraining_rows(TEXTS, tokenizer, chunk_length=16, autoencoding_ratio=1.0)
    assert {r["task"] for r in only_ae} == {AUTOENCODING}
    with pytest.raises(ValueError, match="autoencoding_ratio"):
        make_pretraining_rows(TEXTS, tokenizer, chunk_length=16, autoencoding_ratio=1.5)


def test_collator_reads_the_chunk_without_query_and_targets_the_task():
    model = make_scaledown(compressor_type="encoder", encoder="modernbert")
    collator = PretrainingCollator.from_model(model)
    rows = [
        {"text": "Paris is the capital of France.", "continuation": "Berlin is in Germany.", "task": AUTOENCODING},
        {"text": "Paris is the capital of France.", "continuation": "Berlin is in Germany.", "task": CONTINUATION},
    ]
    batch = collator(rows)
    assert "teacher_scores" not in batch
    assert torch.equal(batch["compressor_input_ids"][0], batch["compressor_input_ids"][1])  # same chunk, no query
    for row, labels in zip(rows, batch["labels"]):
        target = model.tokenizer.decode(labels[labels != -100][:-1])
        assert target == (row["text"] if row["task"] == AUTOENCODING else row["continuation"])
    slots = (batch["input_ids"] == model.config.memory_token_id).sum(dim=1)
    assert slots.tolist() == [model.config.num_memory_tokens] * 2
    with pytest.raises(ValueError, match="task"):
        collator([dict(rows[0], task="translate")])


@pytest.mark.parametrize("encoder", ["modernbert", "bert"])
def test_pretraining_lowers_both_task_losses_with_the_shared_trainer(tmp_path, encoder):
    """Same ScaleDownTrainer and loss as fine-tuning; the generator's base weights stay frozen."""
    model = make_scaledown(compressor_type="encoder", encoder=encoder, lora_dropout=0.0)
    frozen = {n: p.detach().clone() for n, p in model.generator.named_parameters() if not p.requires_grad}
    rows = make_pretraining_rows(TEXTS * 2, model.compressor_tokenizer, chunk_length=16, seed=0)
    held_out = [r for r in rows if r["continuation"]][:4]
    before = evaluate_pretraining(model, held_out, max_new_tokens=8)
    args = ScaleDownTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=30,
        learning_rate_generator=1e-2,
        learning_rate_compressor=1e-2,
        logging_steps=5,
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    collator = PretrainingCollator.from_model(model)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses
    after = evaluate_pretraining(model, held_out, max_new_tokens=8)
    assert after["continuation_perplexity"] < before["continuation_perplexity"]
    assert 0.0 <= after["autoencoding_rouge_l"] <= 1.0 and after["continuation_tokens"] > 0
    model.unmerge_adapters()  # generating in eval mode folded the adapters in
    for name, param in model.generator.named_parameters():
        if name in frozen:  # untrained: equal up to the rounding of one fold and unfold
            torch.testing.assert_close(param.detach(), frozen[name], rtol=1e-6, atol=1e-6, msg=name)


def test_read_texts_from_files_squad_and_datasets(tmp_path):
    (tmp_path / "a.txt").write_text("First passage.\n\nSecond passage.\n\n\nFirst passage.\n")
    squad = Path(__file__).resolve().parents[1] / "scaledown" / "data" / "squad_v1.1_dev_sample.json"
    DatasetDict({"train": Dataset.from_dict({"text": ["From a dataset.", ""]})}).save_to_disk(str(tmp_path / "ds"))
    texts = read_texts([str(tmp_path / "a.txt"), str(tmp_path / "ds")])
    assert texts == ["First passage.", "Second passage.", "From a dataset."]
    assert len(read_texts([str(squad)])) > 12
    with pytest.raises(ValueError, match="column"):
        read_texts([str(tmp_path / "ds")], text_column="content")
    with pytest.raises(ValueError, match="expected"):
        read_texts([str(tmp_path / "a.csv")])
    train, test = split_rows([{"text": str(i), "continuation": "x" if i % 2 else ""} for i in range(10)], 3)
    assert len(test) == 3 and all(r["continuation"] for r in test) and len(train) == 7


def test_read_texts_takes_one_split_of_a_prepared_folder_and_its_document_lists(tmp_path):
    """The reading recipe pretrains on the training split's retrieved documents only: held-out articles stay unseen."""
    prepared = DatasetDict(
        {
            "train": Dataset.from_dict({"documents": [["Doc A.", "Doc B."], ["Doc B.", "Doc C."]]}),
            "test": Dataset.from_dict({"documents": [["Held-out doc."]]}),
        }
    )
    prepared.save_to_disk(str(tmp_path / "prepared"))
    folder = str(tmp_path / "prepared")
    assert read_texts([folder], "documents", ["train"]) == ["Doc A.", "Doc B.", "Doc C."]
    assert "Held-out doc." in read_texts([folder], "documents")
    with pytest.raises(ValueError, match="no split 'validation'"):
        read_texts([folder], "documents", ["validation"])


def test_cli_pretrain_end_to_end(tmp_path):
    generator, tokenizer = make_generator("llama")
    generator.save_pretrained(tmp_path / "gen")
    tokenizer.save_pretrained(tmp_path / "gen")
    (tmp_path / "text.txt").write_text("\n\n".join(TEXTS * 3))
    argv = [
        "--generator", str(tmp_path / "gen"), "--compressor_type", "llm", "--compressor", str(tmp_path / "gen"),
        "--doc_max_length", "16", "--compression_rate", "4", "--data", str(tmp_path / "text.txt"),
        "--held_out_rows", "2", "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--device", "cpu",
    ]  # fmt: skip
    model_args, data_args, training_args = parse_args(argv, data_class=PretrainingDataArguments)
    assert isinstance(data_args, PretrainingDataArguments) and data_args.autoencoding_ratio == 0.5
    report = run_pretraining(model_args, data_args, training_args)
    saved = json.loads((tmp_path / "out" / "pretraining_eval.json").read_text())
    assert saved["held_out_rows"] == 2 and "before" in saved and "after" in saved
    assert report["train"]["global_step"] == 2
    assert (tmp_path / "out" / "model.safetensors").is_file()
