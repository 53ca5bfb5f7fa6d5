"""notebooks/quickstart.ipynb runs offline on SmolLM2, top to bottom, and is committed with its outputs cleared."""

import os
from pathlib import Path

import pytest


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_offline(tmp_path, smollm2_folder):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["HF_HUB_OFFLINE"] = "1"  # the kernel inherits this process's environment
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()

    def result(cell) -> str:
        return next(o["data"]["text/plain"] for o in cell.outputs if o["output_type"] == "execute_result")

    # Verified folder, processor loaded by AutoProcessor, same answers after the reload.
    assert result(notebook.cells[-1]) == "(True, 'ScaleDownProcessor', True)"
    shapes = result(next(c for c in notebook.cells if "compress_documents(questions" in c.source))
    assert "(2, 8, 576)" in shapes and "(1, 8, 576)" in shapes
