"""Offline quick-start on real weights: SmolLM2-135M-Instruct wrapped with an N-layers compressor.

The compressor is not trained here (training comes with `scaledown train`), so the compressed answers only show the
mechanics: compression shapes, generation, the saved folder and its reload as Hub remote code.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging

from .modeling_scaledown import ScaleDownForCausalLM
from .offline_weights import smollm2_path


logger = logging.get_logger(__name__)

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]
DOCUMENTS = [
    [
        "Paris is the capital and most populous city of France, on the Seine river.",
        "Berlin is the capital and largest city of Germany.",
    ],
    ["Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601."],
]

_RELOAD = """
import json, sys
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps(model.generate_from_text(json.loads(sys.argv[2]), json.loads(sys.argv[3]), max_new_tokens=24)))
"""


def run_quickstart(output_dir: str = "outputs/quickstart", num_compressor_layers: int = 5) -> dict:
    logging.set_verbosity_warning()
    torch.manual_seed(0)
    folder = smollm2_path()
    start = time.perf_counter()
    model = ScaleDownForCausalLM.from_generator(str(folder), num_compressor_layers=num_compressor_layers)
    compressed = model.compress_documents(QUESTIONS, DOCUMENTS)
    answers = model.generate_from_compressed(QUESTIONS, compressed, max_new_tokens=24)
    out = Path(output_dir)
    model.save_pretrained(out)
    reload = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(out), json.dumps(QUESTIONS), json.dumps(DOCUMENTS)],
        capture_output=True,
        text=True,
        check=True,
    )
    reloaded = json.loads(reload.stdout.strip().splitlines()[-1])
    summary = {
        "generator": str(folder),
        "compressor_layers": num_compressor_layers,
        "memory_shapes": [list(c.shape) for c in compressed],
        "answers": answers,
        "reloaded_answers_identical": reloaded == answers,
        "model_folder": str(out.resolve()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return summary
