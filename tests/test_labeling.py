import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from tiny_models import ENCODER_CONFIGS, make_encoder_tokenizer, make_generator
from transformers import BertForSequenceClassification

from scaledown import ScaleDownConfig
from scaledown.training.labeling import (
    LabelJournal,
    bi_encoder_scores,
    cross_encoder_scores,
    label_dataset,
    llm_relevance_scores,
    teacher_answers,
)


QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Where?"]
DOCUMENTS = [["Paris is the capital of France.", "Berlin is in Germany."], ["Shakespeare wrote Hamlet."], []]


def dataset_rows(n):
    return [{"question": f"{QUESTIONS[i % 3]} ({i})", "documents": DOCUMENTS[i % 3]} for i in range(n)]


@pytest.fixture(scope="module")
def teacher():
    model, tokenizer = make_generator("llama")
    tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def test_teacher_answers_are_greedy_and_batch_independent(teacher):
    model, tokenizer = teacher
    config = ScaleDownConfig(doc_max_length=32, num_memory_tokens=4)
    batched = teacher_answers(model, tokenizer, config, QUESTIONS, DOCUMENTS, max_new_tokens=6)
    single = [
        teacher_answers(model, tokenizer, config, [q], [d], max_new_tokens=6)[0] for q, d in zip(QUESTIONS, DOCUMENTS)
    ]
    assert batched == single and len(batched) == 3


def test_relevance_scores_have_one_value_per_document(teacher):
    model, tokenizer = teacher
    config = ScaleDownConfig(doc_max_length=32, num_memory_tokens=4)
    scores = llm_relevance_scores(model, tokenizer, config, QUESTIONS, DOCUMENTS)
    assert [len(s) for s in scores] == [2, 1, 0]
    assert scores[0][0] != scores[0][1]
    tokenizer_ce = make_encoder_tokenizer()
    torch.manual_seed(0)
    cross = BertForSequenceClassification(ENCODER_CONFIGS["bert"](len(tokenizer_ce))).eval()
    ce_scores = cross_encoder_scores(cross, tokenizer_ce, QUESTIONS, DOCUMENTS)
    assert [len(s) for s in ce_scores] == [2, 1, 0]


def test_bi_encoder_relevance_prefers_the_answering_document():
    from transformers import AutoModel, AutoTokenizer

    from scaledown.offline_weights import minilm_path

    encoder, tokenizer = AutoModel.from_pretrained(minilm_path()), AutoTokenizer.from_pretrained(minilm_path())
    scores = bi_encoder_scores(encoder, tokenizer, QUESTIONS, DOCUMENTS)
    assert [len(s) for s in scores] == [2, 1, 0]
    assert scores[0][0] > scores[0][1]  # "Paris is the capital of France." answers "What is the capital of France?"


def test_journal_drops_a_torn_record_and_never_duplicates(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"index": 0, "teacher_answer": "a"}\n{"index": 1, "teacher_answer": "b"}\n{"index": 2, "tea')
    journal = LabelJournal(path)
    assert sorted(journal.done) == [0, 1]
    journal.append([{"index": 1, "teacher_answer": "dup"}, {"index": 2, "teacher_answer": "c"}])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2] and lines[1]["teacher_answer"] == "b"


def test_label_dataset_adds_both_columns(tmp_path, teacher):
    model, tokenizer = teacher
    source = tmp_path / "prepared"
    DatasetDict({"train": Dataset.from_list(dataset_rows(5))}).save_to_disk(str(source))
    config = ScaleDownConfig(doc_max_length=32, num_memory_tokens=4)
    out = label_dataset(source, tmp_path / "labelled", model, tokenizer, config, batch_size=2, max_new_tokens=4)
    train = load_from_disk(str(tmp_path / "labelled"))["train"]
    assert train["teacher_answer"] == out["train"]["teacher_answer"]
    assert [len(s) for s in train["teacher_scores"]] == [len(d) for d in train["documents"]]
    assert not (tmp_path / ".labelled.partial").exists()
    from scaledown.training.data import read_data_record

    assert read_data_record(source) == {}  # not written by prepare-data: nothing to carry over
    assert read_data_record(tmp_path / "labelled")["teacher"]  # the teacher is recorded


def test_label_dataset_labels_only_the_first_rows_asked_for(tmp_path, teacher):
    model, tokenizer = teacher
    source = tmp_path / "prepared"
    DatasetDict(
        {"train": Dataset.from_list(dataset_rows(5)), "test": Dataset.from_list(dataset_rows(2))}
    ).save_to_disk(str(source))
    config = ScaleDownConfig(doc_max_length=32, num_memory_tokens=4)
    out = label_dataset(
        source, tmp_path / "labelled", model, tokenizer, config, batch_size=2, max_new_tokens=4, max_rows={"train": 3}
    )
    assert {split: len(rows) for split, rows in out.items()} == {"train": 3, "test": 2}
    assert out["train"]["question"] == [row["question"] for row in dataset_rows(3)]
    assert [len(s) for s in out["train"]["teacher_scores"]] == [len(d) for d in out["train"]["documents"]]
    assert None not in out["train"]["teacher_answer"]
    with pytest.raises(ValueError, match="max_rows"):
        label_dataset(source, tmp_path / "other", model, tokenizer, config, max_new_tokens=4, max_rows={"dev": 3})
    with pytest.raises(ValueError, match="max_rows"):
        label_dataset(source, tmp_path / "other", model, tokenizer, config, max_new_tokens=4, max_rows=0)


def test_killed_labelling_resumes_and_labels_every_row_once(tmp_path, teacher):
    model, tokenizer = teacher
    teacher_folder = tmp_path / "teacher"
    model.save_pretrained(teacher_folder)
    tokenizer.save_pretrained(teacher_folder)
    source = tmp_path / "prepared"
    DatasetDict({"train": Dataset.from_list(dataset_rows(120))}).save_to_disk(str(source))
    command = [sys.executable, "-m", "scaledown.cli", "label", "--data", str(source), "--teacher"]
    command += [str(teacher_folder), "--batch-size", "2", "--max-new-tokens", "12", "--doc-max-length", "32"]
    command += ["--compression-rate", "8"]

    reference = subprocess.run([*command, "--output", str(tmp_path / "reference")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]

    output = tmp_path / "labelled"
    journal = tmp_path / ".labelled.partial" / "train.jsonl"
    process = subprocess.Popen(
        [*command, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (journal.exists() and journal.read_text().count("\n") >= 6):
        assert process.poll() is None and time.time() < deadline, "labelling ended before the kill"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = journal.read_text().count("\n")
    assert done_before < 120 and not output.exists()

    resumed = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load_from_disk(str(tmp_path / "reference"))["train"]
    got = load_from_disk(str(output))["train"]
    assert len(got) == 120
    assert got["teacher_answer"] == expected["teacher_answer"]
    for a, b in zip(got["teacher_scores"], expected["teacher_scores"]):
        assert a == pytest.approx(b, abs=1e-5)


def test_a_resume_with_other_data_or_teacher_is_refused_and_overwrite_starts_over(tmp_path, teacher, monkeypatch):
    """The journal is keyed by row index: resuming it with another dataset or teacher would mix two runs' labels
    (robustness issue, row 1)."""
    model, tokenizer = teacher
    config = ScaleDownConfig(doc_max_length=32, num_memory_tokens=4)
    first, second = tmp_path / "first", tmp_path / "second"
    DatasetDict({"train": Dataset.from_list(dataset_rows(6))}).save_to_disk(str(first))
    DatasetDict({"train": Dataset.from_list(dataset_rows(7)[1:])}).save_to_disk(str(second))
    output = tmp_path / "labelled"
    journal = tmp_path / ".labelled.partial"
    calls = []

    def crash_after_one_batch(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return teacher_answers(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr("scaledown.training.labeling.teacher_answers", crash_after_one_batch)
        with pytest.raises(KeyboardInterrupt):
            label_dataset(first, output, model, tokenizer, config, batch_size=2, max_new_tokens=4, with_scores=False)
    assert (journal / "train.jsonl").read_text().count("\n") == 2

    with pytest.raises(ValueError, match=r"different data.*--overwrite"):
        label_dataset(second, output, model, tokenizer, config, batch_size=2, max_new_tokens=4, with_scores=False)
    other_teacher, _ = make_generator("llama", seed=5)
    with pytest.raises(ValueError, match=r"different teacher"):
        label_dataset(first, output, other_teacher, tokenizer, config, batch_size=2, max_new_tokens=4,
                      with_scores=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"different generation"):
        label_dataset(first, output, model, tokenizer, config, batch_size=2, max_new_tokens=5, with_scores=False)
    assert not output.exists()

    labelled = label_dataset(second, output, model, tokenizer, config, batch_size=2, max_new_tokens=4,
                             with_scores=False, overwrite=True)  # fmt: skip
    alone = teacher_answers(model, tokenizer, config, labelled["train"]["question"],
                            [list(d) for d in labelled["train"]["documents"]], max_new_tokens=4)  # fmt: skip
    assert labelled["train"]["teacher_answer"] == alone  # every label is the second run's own
    assert not journal.exists()
