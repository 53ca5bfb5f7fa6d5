"""The README's main job at a tiny scale: `scaledown demo` end to end on SmolLM2, every artefact checked."""

import json
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from remote_code import generate_in_fresh_process

from scaledown import ScaleDownForCausalLM


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("memory_slots", ["span", "chunk_attention"])
def test_demo_writes_report_card_and_a_loadable_model(tmp_path, smollm2_folder, memory_slots):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "scaledown.cli", "demo", "--output-dir", str(out), "--train-questions", "8",
               "--eval-questions", "4", "--num-train-documents", "2", "--num-eval-documents", "3",
               "--teacher-max-new-tokens", "8", "--eval-max-new-tokens", "8", "--benchmark-batch-sizes", "1",
               "--benchmark-repetitions", "1", "--benchmark-profile", "false", "--warmup-steps", "2",
               "--max-steps", "3", "--memory-slots", memory_slots, "--selector-questions", "16",
               "--selector-epochs", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "After training:" in result.stdout
    artefacts = ["report.md", "report.json", "run.json", "quality.png", "training.png", "eval_before.json"]
    artefacts += ["eval_after.json", "benchmark/benchmark.json", "benchmark/benchmark.png", "model/README.md"]
    for name in artefacts:
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    span = memory_slots == "span"
    # Labelled: only the questions training reads (span slots fit their selector on more, unlabelled).
    assert run["data"]["questions"] == {"train": 8, "test": 4}
    assert run["data"]["sources"] == ["squad_v1.1_dev_sample.json"] and run["data"]["retriever"] == "bm25"
    assert run["eval_after"]["compressed"]["gold"]["count"] == 4
    assert run["eval_before"]["uncompressed"]["teacher_fidelity"]["rouge_l"] == 1.0
    assert "1" in run["benchmark"]["per_batch_size"]
    report = (out / "report.md").read_text()
    assert "| ScaleDown (online compression) |" in report and "| uncompressed base generator" in report
    assert run["train"]["global_step"] == 3
    if span:  # no auto-encoding: the selector is fitted on answer spans, and the base generator stays as it is
        assert (
            run["warm_up"] is None and run["span_selector"]["pairs"] > 0 and "span selector" in run["timings_seconds"]
        )
        assert run["span_selector"]["questions"] == 16
        assert "Span selector: fitted on" in report
    else:
        assert run["warm_up"]["global_step"] == 2 and "warm-up" in run["timings_seconds"]
    assert run["training_arguments"]["freeze_generator"] is False  # LoRA learns to weigh the documents' memory
    # Paired Match with the top 3 documents (the main evaluation) and with the top one only (`extra_eval_documents`)
    by_documents = run["eval_after"]["by_documents"]
    assert (
        list(by_documents) == ["1", "3"]
        and by_documents["3"]["match"] == run["eval_after"]["compressed"]["gold"]["match"]
    )
    assert by_documents["1"]["paired"]["questions"] == 4 and "Match by the number of top documents read" in report
    gain = run["eval_after"]["document_gain"]
    assert gain["num_documents"] == 1 and gain["questions"] == 4
    share = f"{gain['gain_share']:.4f}".rstrip("0").rstrip(".") if "gain_share" in gain else "—"  # none if raw <= 0
    assert f"gain share {share}" in report
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["memory_injection_layer"], config["memory_slots"]) == (5, memory_slots)
    card = ModelCard.load(out / "model" / "README.md")
    match = {r.metric_type: r.metric_value for r in card.data.eval_results}["match"]
    assert match == round(run["eval_after"]["compressed"]["gold"]["match"], 4)
    questions = ["Who wrote Hamlet?"]
    documents = [["Hamlet is a tragedy written by William Shakespeare."]]

    expected = ScaleDownForCausalLM.from_pretrained(out / "model").generate_from_text(
        questions, documents, max_new_tokens=8
    )
    fresh = generate_in_fresh_process(out / "model", questions, documents, tmp_path / "modules", max_new_tokens=8)
    assert fresh["answers"] == expected


def test_demo_settings_refuse_non_positive_document_counts():
    from scaledown.demo import DemoSettings

    with pytest.raises(ValueError, match="selector_documents"):
        DemoSettings(selector_documents=0)
    with pytest.raises(ValueError, match="extra_eval_documents"):
        DemoSettings(extra_eval_documents=[1, 0])
