import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset, DatasetDict
from remote_code import generate_in_fresh_process
from safetensors.torch import load_file
from tiny_models import make_generator, make_scaledown

from scaledown import ScaleDownForCausalLM
from scaledown.training import ScaleDownDataCollator, ScaleDownTrainer, ScaleDownTrainingArguments
from scaledown.training.run import parse_args
from scaledown.training.trainer import CHECKPOINT_COMPLETE, last_complete_checkpoint


def rows(n=24):
    answers = ["Paris is the capital.", "Shakespeare.", "It flows through Berlin, the capital of Germany."]
    return [
        {
            "question": f"What is the capital of France, question {i}?",
            "documents": ["Paris is the capital of France.", "Berlin is in Germany.", "Water boils at 100 degrees."][
                : 1 + i % 3
            ],
            "teacher_answer": answers[i % 3],
            "teacher_scores": [2.0, -1.0, -2.0][: 1 + i % 3],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-generator")
    model, tokenizer = make_generator("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "labelled"
    DatasetDict({"train": Dataset.from_list(rows()), "test": Dataset.from_list(rows(4))}).save_to_disk(str(folder))
    return folder


def arguments(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=8,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        learning_rate_generator=5e-3,
        learning_rate_compressor=5e-3,
    )
    defaults.update(kwargs)
    return ScaleDownTrainingArguments(**defaults)


def test_arguments_default_to_the_paper_recipe():
    args = ScaleDownTrainingArguments(output_dir="x", use_cpu=True)
    assert args.weight_decay == 0.1 and args.max_grad_norm == 1.0 and args.num_train_epochs == 1
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "linear"
    assert getattr(args.optim, "value", args.optim) == "adamw_torch"
    assert args.warmup_ratio == 0.05 and args.remove_unused_columns is False
    assert args.num_train_documents == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"learning_rate_generator": 0}, "learning_rate_generator"),
        ({"reranking_loss_weight": -1}, "reranking_loss_weight"),
        ({"kl_temperature": 0}, "kl_temperature"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"num_train_documents": 0}, "num_train_documents"),
        ({"max_prompt_length": 0}, "max_prompt_length"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
        ({"hidden_distillation_weight": -1, "raw_document_teacher": True}, "hidden_distillation_weight"),
        ({"hidden_distillation_weight": 1.0}, "raw_document_teacher"),
    ],
)
def test_arguments_range_checks(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ScaleDownTrainingArguments(output_dir="x", use_cpu=True, **kwargs)


def test_optimizer_groups_use_the_per_module_learning_rates(tmp_path):
    model = make_scaledown(enable_reranking=True)
    args = arguments(tmp_path, learning_rate_generator=None, learning_rate_compressor=None)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
    groups = {g["name"]: g for g in trainer.create_optimizer().param_groups}
    assert groups["generator"]["lr"] == 1e-4 and groups["compressor"]["lr"] == 5e-5  # N-layers compressor
    assert groups["compressor"]["weight_decay"] == 0.1 and groups["compressor_no_decay"]["weight_decay"] == 0.0
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)
    encoder = make_scaledown("llama", "encoder")
    trainer = ScaleDownTrainer(model=encoder, args=args, train_dataset=Dataset.from_list(rows()))
    assert {g["name"]: g["lr"] for g in trainer.create_optimizer().param_groups}["compressor"] == 1e-4


def test_training_lowers_the_loss_and_leaves_frozen_weights(tmp_path):
    model = make_scaledown(enable_reranking=True, lora_dropout=0.0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = arguments(tmp_path, max_steps=20, learning_rate_generator=3e-2, learning_rate_compressor=3e-2)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.5
    assert {"ce", "rerank_mse"} <= set(logs[0])
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_a_loaded_model_trains_by_the_trainers_rule(tmp_path):
    """`from_pretrained` applies no freezing of its own (transformers 5 returns every weight trainable); the trainer
    applies the training rule: the generator's own weights stay fixed, its adapters and the compressor side learn."""
    make_scaledown(lora_dropout=0.0).save_pretrained(tmp_path / "model")
    model = ScaleDownForCausalLM.from_pretrained(tmp_path / "model")
    model.requires_grad_(True)  # whatever the loader left
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ScaleDownTrainer(
        model=model, args=arguments(tmp_path, max_steps=3), train_dataset=Dataset.from_list(rows())
    ).train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n or ".generator." not in f".{n}" for n in moved), sorted(moved)[:5]
    assert any("lora_" in n for n in moved) and any(n.startswith("compressor.") for n in moved)


@pytest.mark.parametrize("side", ["generator", "compressor"])
def test_a_frozen_side_does_not_move(tmp_path, side):
    """`freeze_generator` / `freeze_compressor`: that side keeps its weights (and gets no gradients, so it does not
    weigh in the clipping norm), the other side still learns."""
    model = make_scaledown(enable_reranking=True, lora_dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = arguments(tmp_path, max_steps=4, **{f"freeze_{side}": True})
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
    trainer.train()
    moved = {n: not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before}
    assert any(m for n, m in moved.items() if n.startswith("rerank_head.")), "the relevance head learns either way"
    moved = {n: m for n, m in moved.items() if not n.startswith("rerank_head.")}
    is_generator = {n: ".generator." in f".{n}" for n in moved}
    assert not any(m for n, m in moved.items() if is_generator[n] == (side == "generator")), side
    assert any(m for n, m in moved.items() if is_generator[n] != (side == "generator"))
    assert all(
        p.grad is None for n, p in model.named_parameters() if n in moved and is_generator[n] == (side == "generator")
    )
    # Both sides frozen: only the heads (relevance head, span selector) learn; a model without them has nothing to.
    both = arguments(tmp_path, freeze_generator=True, freeze_compressor=True)
    ScaleDownTrainer(model=make_scaledown(enable_reranking=True), args=both, train_dataset=Dataset.from_list(rows()))
    with pytest.raises(ValueError, match="Nothing left to train"):
        ScaleDownTrainer(model=make_scaledown(), args=both, train_dataset=Dataset.from_list(rows()))


def test_collator_builds_the_raw_document_teacher_prompts():
    model = make_scaledown()
    collator = ScaleDownDataCollator.from_model(model, raw_document_teacher=True)
    batch = collator(rows(3))
    teacher_ids, student_ids = batch["teacher_input_ids"], batch["input_ids"]
    for row, data in enumerate(rows(3)):
        teacher = model.tokenizer.decode(teacher_ids[row][batch["teacher_attention_mask"][row].bool()])
        assert all(document in teacher for document in data["documents"])
        assert model.config.memory_token_id not in teacher_ids[row].tolist()
        # Both prompts end with the same question and answer tokens.
        student = student_ids[row][batch["attention_mask"][row].bool()].tolist()
        answer = model.tokenizer(data["teacher_answer"], add_special_tokens=False)["input_ids"]
        assert (
            teacher_ids[row][batch["teacher_attention_mask"][row].bool()].tolist()[-len(answer) - 1 :]
            == (student[-len(answer) - 1 :])
        )
    assert "teacher_input_ids" not in ScaleDownDataCollator.from_model(model)(rows(3))


def test_collator_puts_the_answer_bearing_document_first():
    """`answer_document_first`: the first document containing a gold answer moves to the top with its teacher
    score; rows without one, or without gold answers, keep the retrieval order."""
    model = make_scaledown(enable_reranking=True)
    rows = [
        {"question": "Capital?", "documents": ["Berlin is in Germany.", "Rome.", "PARIS is the capital."],
         "gold_answers": ["Paris"], "teacher_answer": "Paris", "teacher_scores": [0.1, 0.2, 0.3]},
        {"question": "Capital?", "documents": ["Berlin is in Germany.", "Rome."], "gold_answers": ["Madrid"],
         "teacher_answer": "Madrid", "teacher_scores": [0.1, 0.2]},
        {"question": "Capital?", "documents": ["Berlin is in Germany.", "Rome."], "teacher_answer": "x",
         "teacher_scores": [0.1, 0.2]},
    ]  # fmt: skip
    collator = ScaleDownDataCollator.from_model(model, num_train_documents=1, answer_document_first=True)
    moved = [collator._answer_document_first(row) for row in rows]
    assert moved[0]["documents"] == ["PARIS is the capital.", "Berlin is in Germany.", "Rome."]
    assert moved[0]["teacher_scores"] == [0.3, 0.1, 0.2]
    assert moved[1] is rows[1] and moved[2] is rows[2]
    batch = collator(rows)
    plain = ScaleDownDataCollator.from_model(model, num_train_documents=1)(rows)
    first_row = model.compressor_tokenizer.decode(batch["compressor_input_ids"][0])
    assert "PARIS" in first_row and "PARIS" not in model.compressor_tokenizer.decode(plain["compressor_input_ids"][0])
    assert batch["teacher_scores"].tolist()[0] == pytest.approx(0.3)
    assert ScaleDownTrainingArguments(output_dir="x", use_cpu=True, answer_document_first=True).answer_document_first


def test_collator_mixes_auto_encoding_rows_of_the_top_document():
    """`autoencoding_mix`: the drawn rows read their top document without the query and target its text under the
    pretraining instruction; the other rows are the usual question-answering rows, unchanged."""
    from scaledown.training.collator import AUTOENCODING, INSTRUCTIONS

    model = make_scaledown(enable_reranking=True)
    data = rows(12)
    plain = ScaleDownDataCollator.from_model(model)(data)
    batch = ScaleDownDataCollator.from_model(model, autoencoding_mix=0.5, seed=3)(data)
    # Relevance targets: the question-answering rows' own, NaN (left out of the MSE) for an auto-encoding row.
    expected_scores = []
    decode = model.tokenizer.decode
    mixed, autoencoded = 0, []
    for i, row in enumerate(data):
        labels = batch["labels"][i]
        target = decode(labels[labels != -100][:-1])
        prompt = decode(batch["input_ids"][i][batch["attention_mask"][i].bool()])
        autoencoded.append(target != row["teacher_answer"])
        if target == row["teacher_answer"]:
            expected_scores += row["teacher_scores"]
            same_row = plain["input_ids"][i][plain["attention_mask"][i].bool()]
            assert torch.equal(batch["input_ids"][i][batch["attention_mask"][i].bool()], same_row)
            assert row["question"] in prompt
            continue
        mixed += 1
        expected_scores.append(float("nan"))
        assert target == row["documents"][0] and INSTRUCTIONS[AUTOENCODING] in prompt
        assert row["question"] not in prompt
        assert (batch["input_ids"][i] == model.config.memory_token_id).sum() == model.config.num_memory_tokens
    assert 0 < mixed < len(data)
    torch.testing.assert_close(batch["teacher_scores"], torch.tensor(expected_scores), equal_nan=True)
    memory_rows = (batch["input_ids"] == model.config.memory_token_id).sum() // model.config.num_memory_tokens
    assert batch["compressor_input_ids"].shape[0] == memory_rows  # one compressed document per memory block
    compressor_text = [
        decode(r[m.bool()]) for r, m in zip(batch["compressor_input_ids"], batch["compressor_attention_mask"])
    ]
    assert sum("question" not in t for t in compressor_text) == mixed  # the auto-encoded documents: no query
    assert "label_weights" not in batch  # every token alike by default
    weighted = ScaleDownDataCollator.from_model(model, autoencoding_mix=0.5, autoencoding_loss_weight=0.1, seed=3)
    weighted = weighted(data)
    assert torch.equal(weighted["labels"], batch["labels"])
    expected_weights = torch.tensor([0.1 if a else 1.0 for a in autoencoded])[:, None].expand_as(batch["labels"])
    torch.testing.assert_close(weighted["label_weights"], expected_weights)
    with pytest.raises(ValueError, match="autoencoding_loss_weight"):
        ScaleDownDataCollator.from_model(model, autoencoding_loss_weight=-1.0)
    with pytest.raises(ValueError, match="autoencoding_loss_weight"):
        ScaleDownTrainingArguments(output_dir="unused", autoencoding_loss_weight=-1.0)
    with pytest.raises(ValueError, match="autoencoding_mix"):
        ScaleDownDataCollator.from_model(model, autoencoding_mix=1.5)
    with pytest.raises(ValueError, match="autoencoding_mix"):
        ScaleDownTrainingArguments(output_dir="unused", autoencoding_mix=-0.1)


def test_auto_encoding_target_is_what_the_compressor_reads():
    model = make_scaledown()
    model.config.doc_max_length, model.config.compression_rate = 16, 2
    long = " ".join(f"word{i}" for i in range(200))
    batch = ScaleDownDataCollator.from_model(model, autoencoding_mix=1.0)([{"question": "q?", "documents": [long]}])
    labels = batch["labels"][0]
    target = model.tokenizer.decode(labels[labels != -100][:-1])
    assert (
        long.startswith(target)
        and len(model.compressor_tokenizer(target, add_special_tokens=False)["input_ids"]) == 16
    )


@pytest.mark.parametrize("deep", [False, True], ids=["input-memory", "deep-memory"])
def test_dense_distillation_from_the_raw_document_teacher_trains(tmp_path, deep):
    """KL + hidden-state terms against the base generator reading the raw documents: logged, lowered by training,
    and the teacher stays the base generator (adapters off, frozen weights unchanged)."""
    settings = {"memory_injection_layer": 2, "memory_slots": "chunk_mean"} if deep else {}
    model = make_scaledown(lora_dropout=0.0, **settings)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = arguments(
        tmp_path, max_steps=15, raw_document_teacher=True, kl_weight=1.0, hidden_distillation_weight=1.0,
        learning_rate_generator=1e-2, learning_rate_compressor=1e-2,
    )  # fmt: skip
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"ce", "kl", "hidden"} <= set(logs[0])
    assert logs[-1]["kl"] < logs[0]["kl"] and logs[-1]["hidden"] < logs[0]["hidden"]
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


@pytest.mark.parametrize(
    "mix", [{}, {"autoencoding_mix": 0.5, "autoencoding_loss_weight": 0.2}], ids=["answers", "weighted-autoencoding"]
)
def test_gradient_accumulation_matches_the_full_batch(tmp_path, mix):
    """2 x 2 accumulated == 4 at once (token-normalised CE, pair-normalised MSE), rows of different lengths and
    document counts; with auto-encoding rows weighted below the answers, the normaliser is the weighted token count of
    the accumulated batch (the seed draws two auto-encoding rows among the first four). Plain SGD so that the update
    is linear in the gradient."""
    weights = []
    for batch, steps in ((4, 1), (2, 2)):
        model = make_scaledown(enable_reranking=True, lora_dropout=0.0)
        args = arguments(
            tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=steps, max_steps=1, optim="sgd",
            **mix,
        )  # fmt: skip
        args.warmup_steps = 0
        if hasattr(args, "warmup_ratio"):
            args.warmup_ratio = 0.0
        trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name


def test_trainer_normalises_by_the_weighted_token_count(tmp_path):
    """With auto-encoding rows weighted below the answers, the accumulated batch's normaliser is its weighted label
    count: an answer token counts 1, a reconstructed token `autoencoding_loss_weight`."""
    from scaledown.training.losses import weighted_label_count

    model = make_scaledown()
    args = arguments(tmp_path, autoencoding_mix=0.5, autoencoding_loss_weight=0.2)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
    batches = [trainer.data_collator(rows(8)[i : i + 4]) for i in (0, 4)]
    assert any("label_weights" in b for b in batches)
    _, num_items = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
    expected = sum(weighted_label_count(b["labels"], b.get("label_weights")) for b in batches)
    plain = sum(weighted_label_count(b["labels"]) for b in batches)
    assert float(num_items) == pytest.approx(float(expected)) and float(expected) < float(plain)


def test_the_lm_head_reads_only_the_answer_positions(tmp_path, monkeypatch):
    """The trainer asks the generator for the logits from the first answer position on (`logits_to_keep`): the head
    projects far fewer positions, and the loss and its gradients are those of the full logits (auto-encoding rows
    with their label weights included). A caller of the outputs still gets every position's logits."""
    import scaledown.training.trainer as trainer_module
    from scaledown.training.losses import first_needed_logit

    model = make_scaledown(enable_reranking=True, lora_dropout=0.0).eval()
    args = arguments(tmp_path, autoencoding_mix=0.5, autoencoding_loss_weight=0.2)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows()))
    batch = trainer.data_collator(rows(8)[:4])
    assert "label_weights" in batch
    head_lengths = []
    hook = model.generator.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: head_lengths.append(args[0].shape[1])
    )
    results = []
    for keep in (True, False):
        monkeypatch.setattr(trainer_module, "_keeps_logits", lambda model, labels, keep=keep: keep)
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=None)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    monkeypatch.setattr(trainer_module, "_keeps_logits", lambda model, labels: True)
    _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)  # as `prediction_step` asks
    hook.remove()
    length = batch["labels"].shape[1]
    assert outputs.logits.shape[1] == length
    assert head_lengths == [length - first_needed_logit(batch["labels"]), length, length] and head_lengths[0] < length
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        reference = results[1][1][name]  # float noise only: relative to the gradient's scale
        assert (grad - reference).abs().max() <= 1e-5 * max(1.0, float(reference.abs().max())), name


def test_gradient_checkpointing_and_evaluation(tmp_path):
    model = make_scaledown(enable_reranking=True)
    args = arguments(tmp_path, max_steps=2, gradient_checkpointing=True, eval_strategy="steps", eval_steps=2)
    trainer = ScaleDownTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows()), eval_dataset=Dataset.from_list(rows(4))
    )
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals and "eval_ce" in evals[0] and "eval_rerank_mse" in evals[0]


def test_collator_masks_prompts_and_pads_to_fixed_shapes():
    model = make_scaledown(enable_reranking=True)
    collator = ScaleDownDataCollator.from_model(
        model, num_train_documents=2, pad_to_fixed_length=True, max_prompt_length=256
    )
    batch_rows = [dict(r, documents=["Paris.", "Berlin."], teacher_scores=[1.0, 0.0]) for r in rows(3)]
    first, second = collator(batch_rows[:1]), collator(batch_rows)
    assert first["input_ids"].shape[1] == second["input_ids"].shape[1] == 256
    assert first["compressor_input_ids"].shape[1] == second["compressor_input_ids"].shape[1]
    assert second["teacher_scores"].tolist() == [1.0, 0.0] * 3
    labels = second["labels"]
    assert (labels[second["input_ids"] == model.config.memory_token_id] == -100).all()
    assert (labels[second["attention_mask"] == 0] == -100).all()
    with pytest.raises(ValueError, match="exactly 2 documents"):
        collator([dict(batch_rows[0], documents=["only one"])])
    with pytest.raises(ValueError, match="teacher_answer"):
        ScaleDownDataCollator.from_model(model)([{"question": "q", "documents": []}])


def test_fixed_shapes_are_fitted_and_checked_before_training(tmp_path):
    """Under fixed shapes the trainer checks the whole training set up front (a collator error inside an XLA
    data-loader thread would only end the epoch early) and derives `max_prompt_length` when unset."""
    model = make_scaledown(enable_reranking=True)
    data = Dataset.from_list([dict(r, documents=["Paris.", "Berlin."], teacher_scores=[1.0, 0.0]) for r in rows(6)])
    args = arguments(tmp_path, pad_to_fixed_length=True, num_train_documents=2)
    trainer = ScaleDownTrainer(model=model, args=args, train_dataset=data)
    length = trainer.data_collator.max_prompt_length
    longest = int(
        ScaleDownDataCollator.from_model(model, num_train_documents=2)(data.to_list())["attention_mask"].sum(1).max()
    )
    assert length % 64 == 0 and longest <= length < longest + 64
    assert trainer.data_collator(data.to_list()[:2])["input_ids"].shape[1] == length
    with pytest.raises(ValueError, match="max_prompt_length"):
        ScaleDownTrainer(
            model=model,
            args=arguments(tmp_path, pad_to_fixed_length=True, max_prompt_length=8, num_train_documents=2),
            train_dataset=data,
        )
    with pytest.raises(ValueError, match="Row 0 has 1 documents"):
        ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows(3)))


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / CHECKPOINT_COMPLETE).write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving: no marker
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4.incomplete").is_dir() and not (tmp_path / "checkpoint-4").exists()
    assert last_complete_checkpoint(tmp_path / "missing") is None


def write_config(tmp_path, generator_folder, dataset_folder, output, **extra):
    config = {
        "generator": str(generator_folder),
        "num_compressor_layers": 2,
        "doc_max_length": 32,
        "compression_rate": 8,
        "query_max_length": 16,
        "enable_reranking": True,
        "lora_dropout": 0.0,
        "dataset_dir": str(dataset_folder),
        "output_dir": str(output),
        "per_device_train_batch_size": 2,
        "max_steps": 8,
        "save_steps": 2,
        "logging_steps": 1,
        "use_cpu": True,
        "seed": 0,
        "learning_rate_generator": 1e-3,
        "learning_rate_compressor": 1e-3,
    }
    config.update(extra)
    path = tmp_path / f"{output.name}.json"
    path.write_text(json.dumps(config))
    return path


def run_cli(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "scaledown.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
        **kwargs,
    )


def test_cli_parses_json_and_yaml_with_overrides(tmp_path, generator_folder, dataset_folder):
    path = write_config(tmp_path, generator_folder, dataset_folder, tmp_path / "out")
    model_args, data_args, training_args = parse_args([str(path), "--max_steps", "3"])
    assert training_args.max_steps == 3 and model_args.num_compressor_layers == 2
    assert data_args.dataset_dir == str(dataset_folder)
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("generator: g\ndataset_dir: d\noutput_dir: o\nnum_compressor_layers: 3\n")
    model_args, _, _ = parse_args([str(yaml_path)])
    assert model_args.num_compressor_layers == 3
    yaml_path.write_text("generator: g\ndataset_dir: d\nnot_a_setting: 1\n")
    with pytest.raises(ValueError, match="not_a_setting"):
        parse_args([str(yaml_path)])


def test_cli_device_choice(tmp_path, generator_folder, dataset_folder):
    path = write_config(tmp_path, generator_folder, dataset_folder, tmp_path / "out")
    args = parse_args([str(path), "--device", "cpu", "--max_steps", "2"])[2]
    assert args.use_cpu and args.max_steps == 2
    with pytest.raises(ValueError, match="--device"):
        parse_args([str(path), "--device=tpu"])


def test_trainium_without_the_neuron_sdk_is_a_clear_import_error(tmp_path, generator_folder, dataset_folder):
    """Neither optimum-neuron's NeuronTrainer nor the Neuron SDK installs here: asking for them says what to do,
    while everything else keeps working."""
    import scaledown.training as training

    path = write_config(tmp_path, generator_folder, dataset_folder, tmp_path / "out")
    for ask in (
        lambda: parse_args([str(path), "--device", "trainium"]),
        lambda: training.ScaleDownNeuronTrainer,
        lambda: __import__("scaledown.training.neuron_trainer"),
    ):
        with pytest.raises(ImportError, match="pip.repos.neuron.amazonaws.com"):
            ask()
    assert training.ScaleDownTrainer is ScaleDownTrainer
    result = run_cli("train", path, "--device", "trainium", "--max_steps", "1")
    assert result.returncode != 0 and "Neuron SDK" in result.stderr


def test_cli_train_writes_a_loadable_safetensors_model(tmp_path, generator_folder, dataset_folder):
    output = tmp_path / "trained"
    config = write_config(tmp_path, generator_folder, dataset_folder, output, max_steps=4)
    result = run_cli("train", config)
    assert result.returncode == 0, result.stderr[-3000:]
    files = {p.name for p in output.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_scaledown.py", "training_args.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    assert (output / "checkpoint-4" / CHECKPOINT_COMPLETE).is_file()
    model = ScaleDownForCausalLM.from_pretrained(output)
    # The CLI's default memory path: pooled chunks written at the compressor's depth (2 layers here).
    assert (model.config.memory_injection_layer, model.config.memory_slots) == (2, "chunk_attention")
    questions, documents = ["What is the capital of France?"], [["Paris is the capital of France."]]
    expected = model.generate_from_text(questions, documents, max_new_tokens=5)
    fresh = generate_in_fresh_process(output, questions, documents, tmp_path / "modules", max_new_tokens=5)
    assert fresh["answers"] == expected


def test_train_fits_the_span_selector_before_training_a_new_model_only(tmp_path, generator_folder):
    from scaledown.training.run import DataArguments, ModelArguments, run_training

    data = tmp_path / "data"
    DatasetDict({"train": Dataset.from_list([{**r, "gold_answers": ["Paris"]} for r in rows(12)])}).save_to_disk(
        str(data)
    )
    model_args = ModelArguments(
        generator=str(generator_folder), num_compressor_layers=2, doc_max_length=32, compression_rate=8,
        query_max_length=16, memory_slots="span",
    )  # fmt: skip
    run_training(model_args, DataArguments(dataset_dir=str(data)), arguments(tmp_path, max_steps=1, selector_epochs=2))
    record = json.loads((tmp_path / "run" / "selector_results.json").read_text())
    assert record["questions"] == 12 and record["pairs"] == 11 and len(record["loss"]) == 2
    # Continuing from the trained folder keeps its selector: no second fit unless `selector_epochs` asks for one.
    again = arguments(tmp_path, max_steps=1, output_dir=str(tmp_path / "again"))
    run_training(ModelArguments(model_name_or_path=str(tmp_path / "run")), DataArguments(dataset_dir=str(data)), again)
    assert (tmp_path / "again" / "model.safetensors").is_file()
    assert not (tmp_path / "again" / "selector_results.json").exists()


def test_killed_run_resumes_to_the_same_weights(tmp_path, generator_folder, dataset_folder):
    """kill -9 after a checkpoint, resume from it: the same final weights as an uninterrupted run (fp32, CPU)."""
    straight = tmp_path / "straight"
    result = run_cli("train", write_config(tmp_path, generator_folder, dataset_folder, straight, max_steps=30))
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = tmp_path / "resumed"
    config = write_config(tmp_path, generator_folder, dataset_folder, resumed, max_steps=30)
    # The kill lands a few steps after checkpoint-4, possibly while a later checkpoint is half-written.
    process = subprocess.Popen(
        [sys.executable, "-m", "scaledown.cli", "train", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (resumed / "checkpoint-4" / CHECKPOINT_COMPLETE).is_file():
        assert process.poll() is None and time.time() < deadline, "training ended before the kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "model.safetensors").exists()  # it really died mid-run

    result = run_cli("train", config, "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stderr
    expected, got = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, generator_folder, dataset_folder):
    config = write_config(tmp_path, generator_folder, dataset_folder, tmp_path / "empty")
    result = run_cli("train", config, "--resume_from_checkpoint", "true")
    assert result.returncode != 0 and "No complete checkpoint" in result.stderr


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"],
    # `accelerate launch --cpu` always starts a single process (accelerate's simple launcher); `--multi_gpu` starts
    # torchrun-style workers, and `use_cpu` in the training arguments keeps them on the CPU (gloo).
    "accelerate": [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29532",
    ],
}  # fmt: skip


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_process_ddp_training_saves_a_loadable_model(tmp_path, generator_folder, dataset_folder, launcher):
    output = tmp_path / "ddp"
    config = write_config(tmp_path, generator_folder, dataset_folder, output, max_steps=3, save_steps=100)
    result = subprocess.run(
        [*LAUNCHERS[launcher], "-m", "scaledown.cli", "train", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((output / "trainer_state.json").read_text())
    # 3 steps x 2 rows x 2 processes = half of the 24 training rows: two real ranks shared the data.
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(0.5)
    model = ScaleDownForCausalLM.from_pretrained(output)
    assert len(model.generate_from_text(["q?"], [["Paris."]], max_new_tokens=2)) == 1


def test_one_parser_serves_every_command(tmp_path):
    """train, pretrain, label, prepare-data and demo: one `ScaleDownParser` (YAML/JSON file, then --key value
    overrides, dash or underscore spellings, repeated list options collected)."""
    from scaledown.demo import DemoSettings
    from scaledown.training.arguments import ScaleDownParser
    from scaledown.training.data import PrepareDataArguments
    from scaledown.training.labeling import LabelArguments

    config = tmp_path / "prep.yaml"
    config.write_text("source: [squad:a.json]\ntokenizer: tok\noutput: out\ndoc_max_length: 64\n")
    parser = ScaleDownParser((PrepareDataArguments,))
    (args,) = parser.parse_args_and_config(
        [str(config), "--num-eval-documents", "3", "--source", "squad:b.json", "c.jsonl"]
    )
    assert (args.doc_max_length, args.num_eval_documents, args.source) == (64, 3, ["squad:b.json", "c.jsonl"])
    (args,) = ScaleDownParser((PrepareDataArguments,)).parse_args_and_config(
        ["--source", "a", "--tokenizer", "t", "--source", "b", "--output", "o", "--max_train_questions", "5"]
    )
    assert args.source == ["a", "b"] and args.max_train_questions == 5
    with pytest.raises(ValueError, match="`--source` is required"):
        ScaleDownParser((PrepareDataArguments,)).parse_args_and_config(["--tokenizer", "t", "--output", "o"])

    (label,) = ScaleDownParser((LabelArguments,)).parse_args_and_config(
        ["--data", "d", "--output", "o", "--teacher", "t", "--no-scores", "--splits", "train", "test"]
    )
    assert label.no_scores is True and label.splits == ["train", "test"] and label.batch_size == 8

    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({"train_questions": 12, "enable_reranking": False}))
    (settings,) = ScaleDownParser((DemoSettings,)).parse_args_and_config([str(demo), "--epochs", "2"])
    assert (settings.train_questions, settings.enable_reranking, settings.epochs) == (12, False, 2.0)
    demo.write_text(json.dumps({"train_question": 12}))
    with pytest.raises(ValueError, match=r"unknown settings \['train_question'\]"):
        ScaleDownParser((DemoSettings,)).parse_args_and_config([str(demo)])
    assert "% warmup" in ScaleDownParser((DemoSettings,)).parser.format_help()  # a help with "%" still formats


def test_renamed_settings_still_parse_with_a_warning(tmp_path, caplog):
    """Old names of the document counts (`train_top_k`, `eval_documents`, ...) in files and on the command line
    reach today's one name, each with a warning."""
    from scaledown.demo import DemoSettings
    from scaledown.training.arguments import ScaleDownParser
    from scaledown.training.data import PrepareDataArguments

    config = tmp_path / "prep.yaml"
    config.write_text("source: [a]\ntokenizer: tok\noutput: out\ntrain_top_k: 2\n")
    with caplog.at_level("WARNING"):
        (args,) = ScaleDownParser((PrepareDataArguments,)).parse_args_and_config([str(config), "--eval-top-k", "7"])
    assert (args.num_train_documents, args.num_eval_documents) == (2, 7)
    assert "`train_top_k` is now `num_train_documents`" in caplog.text and "`--eval-top-k` is now" in caplog.text
    (settings,) = ScaleDownParser((DemoSettings,)).parse_args_and_config(["--train_documents=3"])
    assert settings.num_train_documents == 3
