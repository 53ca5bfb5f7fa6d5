"""The XLA line: run with torch-xla on the CPU (`PJRT_DEVICE=CPU`), in the environment `make test-xla` builds."""

import os
import sys
from pathlib import Path


os.environ.setdefault("PJRT_DEVICE", "CPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_models
