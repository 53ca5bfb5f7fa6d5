"""`scaledown push <folder> <repo_id>`: upload a ScaleDown folder (weights, code, tokenizers, card) in one commit."""

import json
import os
from pathlib import Path

from huggingface_hub import HfApi
from transformers.utils import logging

from .card import write_model_card


logger = logging.get_logger(__name__)

REQUIRED_FILES = ("config.json", "configuration_scaledown.py", "modeling_scaledown.py", "tokenizer_config.json")


def _relative_imports(folder: Path, name: str) -> list[str]:
    """The code files that `name` in `folder` imports relatively, and theirs, parsed as transformers' remote-code
    loader parses them (`get_relative_imports`); a missing file is reported by the caller, not followed."""
    from transformers.dynamic_module_utils import get_relative_imports

    found, pending = [], [name]
    while pending:
        path = folder / pending.pop()
        if not path.is_file():
            continue
        for module in get_relative_imports(str(path)):
            if f"{module}.py" not in found:
                found.append(f"{module}.py")
                pending.append(f"{module}.py")
    return found


def check_folder(folder: Path) -> None:
    """A clear error when `folder` is not a complete ScaleDown model folder."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    missing += [name for name in _relative_imports(folder, "modeling_scaledown.py") if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{folder} is not a complete ScaleDown model folder: missing {missing}.")
    pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles:
        raise ValueError(f"{folder} holds pickle files {pickles}: ScaleDown repos carry safetensors only.")
    if json.loads((folder / "config.json").read_text()).get("model_type") != "scaledown":
        raise ValueError(f"{folder}/config.json is not a ScaleDown configuration.")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    report: str | os.PathLike | None = None,
    run: dict | None = None,
    api: HfApi | None = None,
):
    """Create `repo_id` if needed and upload `folder` in a single commit. The token comes from `token`, else
    `HF_TOKEN` / the saved login (as everywhere in `huggingface_hub`). Without a `README.md` the card is written first
    from `report` (a run's `run.json`, or the JSON of `scaledown evaluate --output`) or `run` (the same as a dict)
    when given; the card's usage snippet names `repo_id`."""
    folder = Path(folder)
    check_folder(folder)
    if report is not None:
        run = json.loads(Path(report).read_text())
    if run is not None or not (folder / "README.md").is_file():
        write_model_card(folder, run, repo_id=repo_id)
    api = api or HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main" and not create_pr:
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"Upload ScaleDown model from {folder.name}",
    )
