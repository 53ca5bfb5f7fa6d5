"""Helpers: load a saved ScaleDown folder in a fresh Python process through the Auto classes + remote code."""

import json
import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import {auto_class}
    model = {auto_class}.from_pretrained(sys.argv[1], trust_remote_code=True)
    request = json.loads(sys.argv[2])
    answers = model.generate_from_text(request["questions"], request["documents"], **request["kwargs"])
    print(json.dumps({{
        "answers": answers,
        "class_module": type(model).__module__,
        "scaledown_imported": any(name == "scaledown" or name.startswith("scaledown.") for name in sys.modules),
    }}))
    """
)


def generate_in_fresh_process(
    folder, questions, documents, modules_cache, auto_class="AutoModelForCausalLM", **kwargs
):
    """Run `generate_from_text` in a new interpreter that never imports `scaledown`, offline. Returns its answers, the
    model class's module, whether `scaledown` was imported, and what it logged (`stderr`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(modules_cache), "PYTHONPATH": ""}
    request = json.dumps({"questions": questions, "documents": documents, "kwargs": kwargs})
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(auto_class=auto_class), str(folder), request],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(modules_cache.parent),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "stderr": result.stderr}
