import json
import os
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from remote_code import generate_in_fresh_process
from tiny_models import make_generator, make_scaledown

from scaledown import ScaleDownForCausalLM
from scaledown.hub_cards import build_model_card, push_folder, write_model_card
from scaledown.hub_cards.card import hub_id
from scaledown.hub_cards.push import check_folder


RUN = {
    "settings": {"data": "squad_v1.1_dev_sample.json", "train_documents": 5},
    "data": {"sources": ["squad_v1.1_dev_sample.json"], "split": "by article, 25% of the articles held out (seed 0)",
             "retriever": "bm25", "doc_max_length": 128, "top_k": {"train": 5, "test": 10},
             "questions": {"train": 160, "test": 80}, "teacher": "SmolLM2-135M-Instruct"},
    "hardware": "x86_64 CPU, 2 cores, 2 threads",
    "training_arguments": {"num_train_epochs": 1.0, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                           "learning_rate_generator": 1e-4, "learning_rate_compressor": 5e-5,
                           "lr_scheduler_type": "linear", "warmup_ratio": 0.05, "weight_decay": 0.1},
    "train": {"log_history": [{"loss": 2.0, "step": 40}]},
    "eval_before": {"questions": 80, "settings": {"num_documents": 10, "max_new_tokens": 32},
                    "uncompressed": {"gold": {"match": 0.34, "exact_match": 0.0, "f1": 0.11, "rouge_l": 0.1}}},
    "eval_after": {"questions": 80, "settings": {"num_documents": 10, "max_new_tokens": 32},
                   "compressed": {"gold": {"match": 0.2875, "exact_match": 0.0125, "f1": 0.1234, "rouge_l": 0.111}}},
    "benchmark": {"settings": {"device": "cpu", "dtype": "float32", "num_documents": 10, "doc_tokens": 128,
                               "query_tokens": 128, "new_tokens": 32},
                  "per_batch_size": {
                      "1": {"speedup": 1.5, "compressed_seconds": 3.0, "uncompressed_seconds": 4.5},
                      "16": {"speedup": 2.7, "compressed_seconds": 10.0, "uncompressed_seconds": 27.0}}},
}  # fmt: skip


@pytest.fixture
def folder(tmp_path):
    model = make_scaledown(enable_reranking=True)
    model.config.generator_name_or_path = "/root/.cache/scaledown/SmolLM2-135M-Instruct-transformers5"
    path = tmp_path / "scaledown-tiny"
    model.save_pretrained(path)
    return path


def test_hub_ids_of_known_local_folders():
    assert (
        hub_id("/root/.cache/scaledown/SmolLM2-135M-Instruct-transformers5") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert hub_id("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai/Mistral-7B-Instruct-v0.2"
    assert hub_id("/some/local/folder") is None and hub_id("tiny-llama") is None


def test_card_carries_the_runs_numbers_and_metadata(folder):
    path = write_model_card(folder, RUN, repo_id="org/scaledown-smollm2-5l")
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["base_model"] == ["HuggingFaceTB/SmolLM2-135M-Instruct"] and data["license"] == "apache-2.0"
    assert {"scaledown", "oscar", "rag", "context-compression", "custom_code"} <= set(data["tags"])
    assert data["datasets"] == ["rajpurkar/squad"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["match"] == 0.2875 and results["f1"] == 0.1234
    assert sorted(r.metric_value for r in card.data.eval_results if r.metric_type == "speedup") == [1.5, 2.7]
    assert "model-index" in path.read_text()
    text = card.text
    assert 'AutoModelForCausalLM.from_pretrained("org/scaledown-smollm2-5l", trust_remote_code=True)' in text
    assert "0.2875" in text and "0.34" in text and "2.7×" in text and "x86_64 CPU" in text
    assert "2504.07109" in text and "Limitations" in text
    assert "| memory enters the generator | as input embeddings (OSCAR) |" in text
    assert "Data: squad_v1.1_dev_sample.json; 160 train questions, 80 test questions; split by article" in text
    assert "bm25 top-5 (train)/10 (test) of 128-token chunks; teacher `SmolLM2-135M-Instruct`." in text


def test_card_states_only_recorded_data_facts(folder):
    """A run on other data, or one that recorded none, gets no SQuAD tag and no invented description."""
    other = {**RUN, "data": {"sources": ["my_faq.jsonl"], "retriever": "dense:minilm", "doc_max_length": 64,
                             "top_k": {"train": 3}, "questions": {"train": 10}}}  # fmt: skip
    card = ModelCard.load(write_model_card(folder, other))
    assert card.data.to_dict().get("datasets") is None
    assert "SQuAD" not in card.text and "my_faq.jsonl" in card.text
    assert "dense:minilm top-3 (train) of 64-token" in card.text
    card = ModelCard.load(write_model_card(folder, {**RUN, "data": None}))
    assert "The run recorded no description of its data." in card.text and "BM25" not in card.text


def test_card_states_the_memory_path(tmp_path):
    model = make_scaledown(memory_injection_layer=2, memory_slots="chunk_attention")
    model.save_pretrained(tmp_path / "deep")
    text = build_model_card(tmp_path / "deep").text
    assert "| memory slots | learned-attention pooling of each document chunk |" in text
    assert "| memory enters the generator | in the residual stream at layer 2 |" in text


def test_card_from_an_evaluation_report_shows_every_system(folder):
    """`scaledown evaluate --output` JSON (pruning baseline and offline model included) makes the card's table; a
    report of neither kind is refused by name."""
    gold = lambda match: {"gold": {"match": match, "exact_match": 0.0, "f1": 0.1, "rouge_l": 0.1}}  # noqa: E731
    paired = {"questions": 80, "match_difference": -0.1, "match_difference_stderr": 0.05}
    evaluation = {"questions": 80, "settings": {"num_documents": 10, "max_new_tokens": 32},
                  "compressed": gold(0.0625), "uncompressed": gold(0.275), "pruned": gold(0.125),
                  "offline": gold(0.0375), "paired": paired, "paired_pruned": paired,
                  "paired_offline": paired}  # fmt: skip
    card = ModelCard.load(write_model_card(folder, evaluation))
    assert {r.metric_value for r in card.data.eval_results if r.metric_type == "match"} == {0.0625}
    for label in ("sentence pruning + base generator", "offline compression", "online compression"):
        assert label in card.text
    assert "| 0.125 |" in card.text and "| 0.0375 |" in card.text and "| 0.275 |" in card.text
    with pytest.raises(ValueError, match="neither a run's"):
        build_model_card(folder, {"speedup": 2.0})


def test_card_without_evaluation_says_so(folder):
    card = build_model_card(folder)
    assert "has not been evaluated yet" in card.text and "No training run" in card.text
    assert not card.data.eval_results


def test_card_snippet_runs_against_the_folder_offline(folder, tmp_path):
    write_model_card(folder, RUN, repo_id="org/scaledown-tiny")
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    code = code.replace('"org/scaledown-tiny"', repr(str(folder)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("[")


def test_save_pretrained_can_write_the_card(tmp_path):
    model = make_scaledown()
    model.save_pretrained(tmp_path / "m", model_card=RUN)
    assert "0.2875" in (tmp_path / "m" / "README.md").read_text()
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "README.md").exists()


class RecordingApi:
    """Stands in for `HfApi`: records the calls instead of sending them (no hub here)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        folder = kwargs["folder_path"]
        kwargs["files"] = sorted(
            os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files
        )
        kwargs["readme"] = open(os.path.join(folder, "README.md")).read()
        self.calls.append(("upload_folder", kwargs))
        return "commit-url"


def test_push_uploads_everything_in_one_commit(folder):
    api = RecordingApi()
    assert push_folder(folder, "org/scaledown-tiny", private=True, revision="v1", api=api, run=RUN) == "commit-url"
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1]["private"] is True and api.calls[2][1]["revision"] == "v1"
    upload = api.calls[2][1]
    expected = {"model.safetensors", "config.json", "modeling_scaledown.py", "configuration_scaledown.py",
                "processing_scaledown.py", "adapters_scaledown.py", "saving_scaledown.py", "processor_config.json",
                "tokenizer.json", "README.md"}  # fmt: skip
    assert expected <= set(upload["files"])
    assert '"org/scaledown-tiny"' in upload["readme"] and "0.2875" in upload["readme"]
    api = RecordingApi()
    push_folder(folder, "org/scaledown-tiny", create_pr=True, api=api)
    assert [n for n, _ in api.calls] == ["create_repo", "upload_folder"] and api.calls[1][1]["create_pr"] is True


def test_model_push_to_hub_goes_through_the_folder_upload(monkeypatch):
    model = make_scaledown()
    seen = {}

    def pusher(folder, repo_id, run=None, **kwargs):
        seen.update(repo_id=repo_id, files=sorted(os.listdir(folder)), kwargs=kwargs, run=run)
        return "ok"

    monkeypatch.setattr(ScaleDownForCausalLM, "folder_pusher", staticmethod(pusher))
    assert model.push_to_hub("org/tiny", private=True, model_card=RUN) == "ok"
    assert seen["repo_id"] == "org/tiny" and seen["kwargs"] == {"private": True} and seen["run"] is RUN
    assert {"model.safetensors", "modeling_scaledown.py", "tokenizer.json"} <= set(seen["files"])


def test_incomplete_folders_are_refused(tmp_path, folder):
    with pytest.raises(ValueError, match="not a folder"):
        check_folder(tmp_path / "missing")
    processing = (folder / "processing_scaledown.py").read_bytes()
    (folder / "processing_scaledown.py").unlink()  # the modeling file imports it
    with pytest.raises(ValueError, match="processing_scaledown.py"):
        check_folder(folder)
    (folder / "processing_scaledown.py").write_bytes(processing)
    saving = (folder / "saving_scaledown.py").read_bytes()
    (folder / "saving_scaledown.py").unlink()  # imported too
    with pytest.raises(ValueError, match="saving_scaledown.py"):
        check_folder(folder)
    (folder / "saving_scaledown.py").write_bytes(saving)
    (folder / "modeling_scaledown.py").unlink()
    with pytest.raises(ValueError, match="modeling_scaledown.py"):
        check_folder(folder)
    (folder / "modeling_scaledown.py").write_text("")
    (folder / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        check_folder(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "scaledown"  # refused, left untouched


def test_adapter_only_export_references_the_base_generator(tmp_path, rag_batch):
    from safetensors.torch import load_file

    base, tokenizer = make_generator("llama")
    base_folder = tmp_path / "base-generator"
    base.save_pretrained(base_folder)
    tokenizer.save_pretrained(base_folder)
    model = ScaleDownForCausalLM.from_generator(
        str(base_folder), num_compressor_layers=2, doc_max_length=32, num_memory_tokens=4, enable_reranking=True
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    full, light = tmp_path / "full", tmp_path / "light"
    model.save_pretrained(full)
    model.save_pretrained(light, adapter_only=True)
    light_keys = set(load_file(light / "model.safetensors"))
    assert not any(k.startswith("generator.") and "lora_" not in k and "embed_tokens" not in k for k in light_keys)
    assert any("lora_B" in k for k in light_keys) and any(k.startswith("compressor.") for k in light_keys)
    assert (light / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size
    assert json.loads((light / "config.json").read_text())["adapter_only"] is True
    assert not hasattr(model.config, "adapter_only")  # the in-memory model still saves full exports
    questions, documents = rag_batch
    expected = model.generate_from_text(questions, documents, max_new_tokens=5)
    reloaded = ScaleDownForCausalLM.from_pretrained(light)
    assert reloaded.generate_from_text(questions, documents, max_new_tokens=5) == expected
    fresh = generate_in_fresh_process(light, questions, documents, tmp_path / "modules", max_new_tokens=5)
    assert fresh["answers"] == expected
    sharded = tmp_path / "light-sharded"  # the normal loading path: sharded exports too, quietly
    model.save_pretrained(sharded, adapter_only=True, max_shard_size="30KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    code = f"from scaledown import ScaleDownForCausalLM as M; M.from_pretrained({str(sharded)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "newly initialized" not in result.stderr, result.stderr[-2000:]
    assert ScaleDownForCausalLM.from_pretrained(sharded).generate_from_text(
        questions, documents, max_new_tokens=5
    ) == (expected)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    lora_key = next(k for k in index["weight_map"] if "lora_B" in k)
    del index["weight_map"][lora_key]  # an export that lost one of its own weights
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lacks"):
        ScaleDownForCausalLM.from_pretrained(sharded)
    (base_folder / "model.safetensors").unlink()  # base generator unreachable: a clear error
    with pytest.raises(OSError, match="base generator"):
        ScaleDownForCausalLM.from_pretrained(light)
