"""The compressed-document store of offline models: built once, resumable, refused by another compressor."""

import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import make_scaledown

from scaledown.store import CompressedStore, build_store, compressor_fingerprint, document_id, generate_from_store


TEXTS = [f"Document {i}: Paris is the capital of France and item {i} is listed here." for i in range(10)]


def test_store_answers_like_the_compressor_and_refuses_other_weights(tmp_path, rag_batch):
    model = make_scaledown(query_dependent=False)
    questions, documents = rag_batch
    texts = [d for docs in documents for d in docs]
    store = build_store(model, texts + texts[:1], tmp_path / "store", batch_size=2, shard_size=2)
    assert len(store) == len(set(texts))  # duplicates stored once
    ids = [[document_id(d) for d in docs] for docs in documents]
    stored = [store.memory(i) for i in ids]
    for got, want in zip(stored, model.compress_documents(documents=documents)):
        torch.testing.assert_close(got, want)
    expected = model.generate_from_text(questions, documents, max_new_tokens=4)
    assert generate_from_store(model, questions, store, ids, max_new_tokens=4) == expected
    with pytest.raises(KeyError, match="not in the store"):
        store.memory(["0" * 64])

    other = make_scaledown(query_dependent=False)
    with torch.no_grad():
        next(other.compressor.parameters()).add_(0.01)
    assert compressor_fingerprint(other) != compressor_fingerprint(model)
    with pytest.raises(ValueError, match="built by another compressor"):
        generate_from_store(other, questions, store, ids, max_new_tokens=4)
    with pytest.raises(ValueError, match="another compressor"):
        build_store(other, texts, tmp_path / "store")
    with pytest.raises(ValueError, match="query-independent"):
        build_store(make_scaledown(), texts, tmp_path / "online")


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[3])
    import torch
    from tiny_models import make_scaledown
    import scaledown.store as store
    model = make_scaledown(query_dependent=False)
    model.load_state_dict(torch.load(sys.argv[2], weights_only=True))
    texts = [f"Document {i}: Paris is the capital of France and item {i} is listed here." for i in range(10)]
    original, calls = model.compress_documents, []
    def dying(*args, **kwargs):  # the third batch never finishes: as if killed with -9
        calls.append(1)
        if len(calls) == 3:
            os._exit(9)
        return original(*args, **kwargs)
    model.compress_documents = dying
    store.build_store(model, texts, sys.argv[1], batch_size=2, shard_size=4)
    """
)


def test_killed_index_run_resumes_to_the_same_store(tmp_path):
    model = make_scaledown(query_dependent=False)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    folder = tmp_path / "store"
    tests = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(folder), str(weights), tests], capture_output=True)
    assert result.returncode == 9  # died inside the second shard
    assert len(CompressedStore(folder)) == 4  # the first shard is complete, the second left nothing behind
    resumed = build_store(model, TEXTS, folder, batch_size=2, shard_size=4)
    reference = build_store(model, TEXTS, tmp_path / "reference", batch_size=3, shard_size=100)
    assert len(resumed) == len(reference) == 10
    ids = [document_id(t) for t in TEXTS]
    torch.testing.assert_close(resumed.memory(ids), reference.memory(ids))
    assert sorted(resumed.dataset["id"]) == sorted(ids)  # nothing duplicated


def test_index_command_stores_a_prepared_corpus(tmp_path, capsys):
    import json

    from datasets import Dataset, DatasetDict

    from scaledown.cli import main

    model = make_scaledown(query_dependent=False)
    model.save_pretrained(tmp_path / "model")
    rows = [{"question": f"q{i}?", "documents": TEXTS[i : i + 3]} for i in range(0, 8, 2)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "data"))
    argv = ["index", "--model", str(tmp_path / "model"), "--corpus", str(tmp_path / "data"), "--output",
            str(tmp_path / "store"), "--shard-size", "3"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    distinct = {d for r in rows for d in r["documents"]}
    assert printed["documents"] == len(distinct) == len(CompressedStore(tmp_path / "store"))
    assert main([*argv[:2], str(tmp_path / "missing"), *argv[3:]]) == 2  # one clear line for a wrong path
