"""Evaluation: offline `evaluate` metric modules shipped in the package, and `scaledown evaluate`."""

from pathlib import Path


METRICS_DIR = Path(__file__).parent / "metrics"


def load_metric(name: str):
    """Load one of ScaleDown's metric modules (`rag_qa`, `reranking`) by path: works offline."""
    import evaluate

    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise ValueError(f"Unknown metric {name!r}: choose from {sorted(p.name for p in METRICS_DIR.iterdir())}.")
    return evaluate.load(str(folder))
