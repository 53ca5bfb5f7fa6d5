"""Folders saved by earlier versions keep loading and answering identically (fixtures: tests/fixtures/, written by
tests/fixtures/make_legacy_folders.py from the commit in each folder's name)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scaledown import ScaleDownForCausalLM


FIXTURES = sorted(p for p in (Path(__file__).parent / "fixtures").glob("*/*") if (p / "expected.json").is_file())


@pytest.mark.parametrize("folder", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("loader", ["ScaleDownForCausalLM", "AutoModelForCausalLM"])
def test_legacy_folder_loads_and_answers_identically(folder, loader):
    expected = json.loads((folder / "expected.json").read_text())
    if loader == "ScaleDownForCausalLM":
        model = ScaleDownForCausalLM.from_pretrained(folder)
    else:  # the package is imported: the Auto class maps the folder's model type to this version's classes
        model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model) is ScaleDownForCausalLM
    questions, documents = expected["questions"], expected["documents"]
    compressed = model.compress_documents(questions, documents)
    for got, want in zip(compressed, expected["memory"]):
        torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-5)
    if expected["rerank_scores"] is not None:
        for got, want in zip(compressed.rerank_scores, expected["rerank_scores"]):
            torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert model.generate_from_text(questions, documents, max_new_tokens=6) == expected["answers"]
