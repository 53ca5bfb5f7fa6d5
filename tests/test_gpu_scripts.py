"""The GPU run of the reading issue (R3) is prepared here and only run on a lent GPU: its scripts must parse, and its
dry run (tiny random generator with SmolLM2's tokenizer, bundled SQuAD sample) must go through every stage on a CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu_quality_run.sh", "gpu_assets.sh", "gpu_check.sh", "gpu_env.sh"])
def test_gpu_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_gpu_quality_run_dry_run_reports_every_stage(tmp_path, smollm2_folder):
    output = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_quality_run.py"),
        "--output-dir",
        str(output),
        "--dry-run",
        "--device",
        "cpu",
        "--tokenizer",
        str(smollm2_folder),
        "--variants",
        "span",
        "deep-attention-aemix",
        "--label-seconds",
        "3",
        "--train-seconds",
        "3",
        "--eval-questions",
        "4",
        "--speed-batch-sizes",
        "1",
        "--budget-seconds",
        "3000",  # a loaded CI machine must not skip the last stage
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((output / "quality.json").read_text())
    stages = report["stages"]
    assert set(stages) == {"prepare", "label", "train_evaluate", "speed"}
    assert stages["label"]["training_questions"] == stages["label"]["labelled"] > 0
    designs = stages["train_evaluate"]["designs"]
    for name in ("span", "deep-attention-aemix"):
        summary = designs[name]["summary"]
        assert summary["steps"] >= 1
        assert summary["paired"]["questions"] == 4
        assert 0.0 <= summary["match_compressed"] <= 1.0
        # a random tiny generator may gain nothing from raw documents: then there is no share, but both are scored
        assert isinstance(summary["document_gain_compressed"], float)
        assert isinstance(summary["document_gain_uncompressed"], float)
        assert (summary["gain_share"] is None) == (summary["document_gain_uncompressed"] <= 0)
    # the span design fits its selector on gold answer spans first; the chunk design has none
    assert designs["span"]["span_selector"]["epochs"] == 4 and designs["span"]["span_selector"]["pairs"] > 0
    assert designs["deep-attention-aemix"]["span_selector"] is None
    per_batch = stages["speed"]["user_path"]["per_dtype"]["float32"]["1"]
    assert per_batch["compressed_seconds"] > 0 and per_batch["uncompressed_seconds"] > 0
    assert (output / "speed" / "benchmark-user.json").is_file()


@pytest.mark.slow
def test_gpu_check_dry_run_writes_the_user_path_benchmark(tmp_path, smollm2_folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    output = tmp_path / "check"
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(output), "--dry-run"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((output / "benchmark-user.json").read_text())
    entry = report["per_dtype"]["float32"]["1"]
    assert entry["speedup"] > 0 and entry["first_token_speedup"] > 0
    assert report["settings"]["attention"] == "sdpa"
    assert (output / "benchmark-user.png").is_file()
