"""Offline (query-independent) compression, PISCO/COCOM style: the same model class reads documents alone."""

import pytest
import torch
from datasets import Dataset
from tiny_models import make_scaledown
from transformers import AutoModelForCausalLM

from scaledown import ScaleDownConfig
from scaledown.training import ScaleDownTrainer, ScaleDownTrainingArguments


def test_offline_config_refuses_reranking():
    with pytest.raises(ValueError, match="`enable_reranking` needs `query_dependent=True`"):
        ScaleDownConfig(query_dependent=False, enable_reranking=True)


@pytest.mark.parametrize("compressor_type", ["n_layers", "encoder"])
def test_offline_model_reads_documents_alone(rag_batch, compressor_type):
    questions, documents = rag_batch
    offline = make_scaledown("llama", compressor_type, query_dependent=False)
    alone = offline.compress_documents(documents=documents)
    assert [tuple(m.shape) for m in alone] == [(len(d), 4, 32) for d in documents]
    with pytest.raises(ValueError, match="compresses offline"):
        offline.compress_documents(questions, documents)
    other = offline.compress_for_questions(["something else entirely?"] * 3, documents)
    for a, b in zip(alone, other):
        torch.testing.assert_close(a, b)  # the question does not reach the compressor
    row = offline.processor.compressor_inputs(questions[:1], documents[:1])["compressor_input_ids"][0]
    assert "What is" not in offline.compressor_tokenizer.decode(row)  # the question is not in the row
    assert len(offline.generate_from_text(questions, documents, max_new_tokens=3)) == 3

    online = make_scaledown("llama", compressor_type)
    with pytest.raises(ValueError, match="compresses online"):
        online.compress_documents(documents=documents)
    with_question = online.compress_for_questions(questions, documents)
    assert not torch.allclose(with_question[0], online.compress_for_questions(["other?"] * 3, documents)[0])


def test_offline_model_trains_saves_and_reloads_through_auto_classes(tmp_path, rag_batch):
    model = make_scaledown(query_dependent=False)
    rows = [{"question": q, "documents": d or ["filler"], "teacher_answer": "Paris"} for q, d in zip(*rag_batch)] * 4
    args = ScaleDownTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="no", num_train_documents=2,
    )  # fmt: skip
    ScaleDownTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows)).train()
    model.eval()
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert reloaded.config.query_dependent is False
    assert reloaded.generate_from_text(*rag_batch, max_new_tokens=3) == model.generate_from_text(
        *rag_batch, max_new_tokens=3
    )


def test_evaluation_sets_online_and_offline_side_by_side(tmp_path, rag_batch):
    """`scaledown evaluate --offline-model`: the offline model answers the same rows; it is paired against the
    uncompressed generator like the online one, scored for document gain, and gets its row in the markdown table."""
    from datasets import DatasetDict

    from scaledown.evaluation.run import evaluate_folder, evaluate_model, summary_lines

    questions, documents = rag_batch
    rows = [{"question": q, "documents": d, "gold_answers": ["Paris"]} for q, d in zip(questions, documents)]
    online, offline = make_scaledown(), make_scaledown(query_dependent=False)
    with pytest.raises(ValueError, match="must be an offline ScaleDown model"):
        evaluate_model(online, rows, offline_model=online, max_new_tokens=2)
    report = evaluate_model(online, rows, offline_model=offline, num_documents=2, max_new_tokens=3,
                            with_document_gain=True)  # fmt: skip
    expected = offline.generate_from_text(questions, [d[:2] for d in documents], max_new_tokens=3)
    assert [r["offline"] for r in report["records"]] == expected
    assert report["paired_offline"]["questions"] == 3 and report["timings"]["offline_seconds"] > 0
    assert report["offline_document_gain"]["uncompressed"] == report["document_gain"]["uncompressed"]
    table = [line for line in summary_lines(report) if line.startswith("| ScaleDown (offline")]
    assert len(table) == 1 and " ± " in table[0]

    online.save_pretrained(tmp_path / "online")
    offline.save_pretrained(tmp_path / "offline")
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "data"))
    folder_report = evaluate_folder(tmp_path / "online", tmp_path / "data", offline_model=tmp_path / "offline",
                                    num_documents=2, max_new_tokens=3)  # fmt: skip
    assert [r["offline"] for r in folder_report["records"]] == expected
    assert folder_report["offline_model"] == str(tmp_path / "offline")
