"""ScaleDownProcessor: the text side of the model, saved with it and loaded by AutoProcessor (also as remote code)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import make_scaledown
from transformers import AutoProcessor

from scaledown import ScaleDownForCausalLM, ScaleDownProcessor
from scaledown.training import ScaleDownDataCollator


@pytest.mark.parametrize("variant", [("llama", "n_layers"), ("mistral", "encoder")], ids=["n_layers", "encoder"])
def test_processor_builds_what_the_model_reads(rag_batch, variant):
    model = make_scaledown(*variant, enable_reranking=True)
    processor = model.processor
    assert processor is model.processor  # cached while the tokenizers and config stay the same
    assert processor.tokenizer is model.tokenizer and processor.compressor_tokenizer is model.compressor_tokenizer
    questions, documents = rag_batch
    inputs = processor(questions, documents)
    assert inputs["compressor_input_ids"].shape[0] == sum(len(d) for d in documents)  # one row per pair
    memory = (inputs["input_ids"] == model.config.memory_token_id).sum(dim=1)
    assert memory.tolist() == [len(d) * model.config.num_memory_tokens for d in documents]
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left-padded for generation
    with torch.no_grad():
        compressed = model.compress(inputs["compressor_input_ids"], inputs["compressor_attention_mask"])
        out = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            memory_embeddings=compressed.memory_embeddings,
            max_new_tokens=4,
            do_sample=False,
        )
    new = processor.batch_decode(out, skip_special_tokens=True)  # `generate` returns the new tokens only
    assert [a.strip() for a in new] == model.generate_from_text(questions, documents, max_new_tokens=4)

    rows = [{"question": q, "documents": d, "teacher_answer": "x"} for q, d in zip(questions, documents)]
    batch = ScaleDownDataCollator.from_model(model)(rows)
    training = processor(questions, documents, answers=["x"] * len(rows))
    for key in ("compressor_input_ids", "input_ids", "labels"):
        assert torch.equal(training[key], batch[key]), key


def test_processor_validates_and_refuses_other_tensors(rag_batch):
    processor = make_scaledown().processor
    with pytest.raises(ValueError, match=r"questions\[1\] must be a string"):
        processor(["q?", 3], [[], []])
    with pytest.raises(ValueError, match="torch tensors only"):
        processor(*rag_batch, return_tensors="np")
    with pytest.raises(ValueError, match="needs the generator's `tokenizer`"):
        ScaleDownProcessor(None, None, None)


@pytest.mark.parametrize("variant", [("llama", "n_layers"), ("mistral", "encoder")], ids=["n_layers", "encoder"])
def test_processor_saves_with_the_model_and_loads_through_auto_processor(tmp_path, rag_batch, variant):
    model = make_scaledown(*variant, enable_reranking=True)
    model.save_pretrained(tmp_path / "m")
    files = set(os.listdir(tmp_path / "m"))
    assert {"processor_config.json", "processing_scaledown.py"} <= files
    assert ("compressor_tokenizer" in files) == (variant[1] != "n_layers")
    saved = json.loads((tmp_path / "m" / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_scaledown.ScaleDownProcessor"}
    for loaded in (AutoProcessor.from_pretrained(tmp_path / "m"), ScaleDownProcessor.from_pretrained(tmp_path / "m")):
        assert type(loaded) is ScaleDownProcessor
        for key, value in loaded(*rag_batch).items():
            assert torch.equal(value, model.processor(*rag_batch)[key]), key
    reloaded = ScaleDownForCausalLM.from_pretrained(tmp_path / "m")
    assert reloaded.processor.config is reloaded.config


def test_auto_processor_loads_as_remote_code_in_a_fresh_process(tmp_path, rag_batch):
    """No `scaledown` import: AutoProcessor runs the folder's own processing file, quietly."""
    model = make_scaledown("mistral", "encoder", enable_reranking=True)
    model.save_pretrained(tmp_path / "m")
    questions, documents = rag_batch
    script = textwrap.dedent(
        """
        import json, sys
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        inputs = processor(*json.loads(sys.argv[2]))
        print(json.dumps({"module": type(processor).__module__, "input_ids": inputs["input_ids"].tolist(),
                          "scaledown_imported": any(n.split(".")[0] == "scaledown" for n in sys.modules)}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m"), json.dumps([questions, documents])],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules") and not out["scaledown_imported"]
    assert out["input_ids"] == model.processor(questions, documents)["input_ids"].tolist()
    assert "custom code" not in result.stderr and "instantiate a model of type" not in result.stderr
