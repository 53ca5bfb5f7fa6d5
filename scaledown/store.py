"""A compressed-document store for offline (query-independent) ScaleDown models: `scaledown index`.

Each document chunk is compressed once, without any question, and its `num_memory_tokens` vectors are stored in a
`datasets` dataset on disk (memory-mapped Arrow, in shards; `push_to_hub`-able like any dataset folder), keyed by a
content hash of the chunk's text ([`document_id`]). The store is stamped with a fingerprint of the weights that
produce the vectors (compressor, projector, slot scorer) and of the memory settings; a model whose fingerprint
differs is refused. Answering from stored vectors runs no compressor at all: [`generate_from_store`].

Building is resumable: shards are written to a temporary folder and renamed into place when complete, and a
resumed run skips every chunk already stored, so a run killed at any point and started again ends with the same
store as an uninterrupted one, nothing lost or duplicated.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)

STORE_CONFIG = "store.json"
SHARDS = "shards"


def document_id(text: str) -> str:
    """The key of a document chunk in a store: SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compressor_fingerprint(model) -> str:
    """SHA-256 over what produces a document's vectors offline: the compressor-side weights (compressor, projector,
    slot scorer and selector, lexical prior, in float32) and the memory settings of the configuration."""
    config = model.config
    digest = hashlib.sha256()
    names = ("query_dependent", "doc_max_length", "num_memory_tokens", "memory_slots", "memory_injection_layer")
    settings = {name: getattr(config, name, None) for name in names}
    if getattr(config, "span_windows", 1) != 1:  # only where it is set: fingerprints of earlier stores stay valid
        settings["span_windows"] = config.span_windows
    if getattr(config, "memory_slots", None) == "span" and getattr(config, "span_lexical_weight", 0):
        settings["span_lexical"] = [config.span_lexical_weight, config.span_lexical_width]
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(("compressor.", "projector.", "slot_scorer.", "slot_selector.", "lexical_prior.")):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class CompressedStore:
    """A store on disk, opened for reading (memory-mapped). `memory(ids)` gives the stored vectors of `ids`."""

    def __init__(self, folder: str | os.PathLike):
        from datasets import concatenate_datasets, load_from_disk

        self.folder = Path(folder)
        config_path = self.folder / STORE_CONFIG
        if not config_path.is_file():
            raise OSError(f"{self.folder} is not a ScaleDown store (no {STORE_CONFIG}): see `scaledown index`.")
        self.config = json.loads(config_path.read_text())
        shards = sorted((self.folder / SHARDS).iterdir()) if (self.folder / SHARDS).is_dir() else []
        parts = [load_from_disk(str(shard)) for shard in shards if shard.is_dir() and not shard.name.startswith(".")]
        self.dataset = concatenate_datasets(parts) if parts else None
        self._rows = {doc_id: i for i, doc_id in enumerate(self.dataset["id"])} if self.dataset is not None else {}

    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._rows

    def check(self, model) -> None:
        """Refuse a model whose compressor-side weights or memory settings differ from the store's."""
        if compressor_fingerprint(model) != self.fingerprint:
            raise ValueError(
                f"{self.folder} was built by another compressor (weights or memory settings differ from this "
                "model's): its vectors would not mean what this generator expects. Rebuild it with `scaledown index` "
                "for this model."
            )

    def memory(self, doc_ids: list[str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`(len(doc_ids), num_memory_tokens, hidden)` vectors of the given documents, in order."""
        missing = [doc_id for doc_id in doc_ids if doc_id not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} document(s) are not in the store {self.folder}, e.g. {missing[0]}.")
        if not doc_ids:
            return torch.zeros(0, self.config["num_memory_tokens"], self.config["hidden_size"], dtype=dtype)
        rows = self.dataset.select([self._rows[doc_id] for doc_id in doc_ids]).with_format("torch")
        return torch.stack([row["memory"] for row in rows]).to(dtype)


def build_store(
    model,
    texts: list[str],
    output_dir: str | os.PathLike,
    batch_size: int = 16,
    shard_size: int = 1024,
) -> CompressedStore:
    """Compress every distinct text of `texts` with the offline `model` into the store at `output_dir` (created, or
    completed when it exists with the same fingerprint). Returns the opened store."""
    from datasets import Dataset

    if model.config.query_dependent:
        raise ValueError(
            "A store holds query-independent vectors: build it with an offline model (`query_dependent=False`). An "
            "online model reads every document with its question, so its vectors cannot be computed ahead."
        )
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"`batch_size` and `shard_size` must be positive, got {batch_size} and {shard_size}.")
    output_dir = Path(output_dir)
    fingerprint = compressor_fingerprint(model)
    config_path = output_dir / STORE_CONFIG
    if config_path.is_file():
        stored = json.loads(config_path.read_text())["fingerprint"]
        if stored != fingerprint:
            raise ValueError(f"{output_dir} holds a store of another compressor: choose a new folder.")
    (output_dir / SHARDS).mkdir(parents=True, exist_ok=True)
    hidden = model.get_input_embeddings().weight.shape[1]
    config = {
        "fingerprint": fingerprint,
        "num_memory_tokens": model.config.num_memory_tokens,
        "hidden_size": hidden,
        "doc_max_length": model.config.doc_max_length,
        "generator_name_or_path": model.config.generator_name_or_path,
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    done = set(CompressedStore(output_dir)._rows)
    todo = [t for t in dict.fromkeys(texts) if document_id(t) not in done]
    existing = [p for p in (output_dir / SHARDS).iterdir() if p.is_dir() and not p.name.startswith(".")]
    next_shard = max((int(p.name) for p in existing), default=-1) + 1
    progress = logging.tqdm(total=len(todo), desc="index", unit="doc")
    model.eval()
    for start in range(0, len(todo), shard_size):
        chunk = todo[start : start + shard_size]
        memory = []
        for offset in range(0, len(chunk), batch_size):
            batch = chunk[offset : offset + batch_size]
            compressed = model.compress_documents(documents=[[text] for text in batch])
            memory += [m[0].float().cpu() for m in compressed]
            progress.update(len(batch))
        shard = Dataset.from_dict(
            {"id": [document_id(t) for t in chunk], "text": chunk, "memory": [m.numpy() for m in memory]}
        )
        staging = Path(tempfile.mkdtemp(prefix=".shard-", dir=output_dir / SHARDS))
        try:
            shard.save_to_disk(str(staging))
            os.replace(staging, output_dir / SHARDS / f"{next_shard:05d}")  # complete shards only
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        next_shard += 1
    progress.close()
    return CompressedStore(output_dir)


def generate_from_store(model, questions: list[str], store: CompressedStore, doc_ids: list[list[str]], **kwargs):
    """Answer `questions` from the stored vectors of their documents (`doc_ids`: per question, [`document_id`]s, in
    retrieval order): no compressor pass at all. `kwargs`: generation options. Refuses another compressor's store."""
    store.check(model)
    if len(doc_ids) != len(questions):
        raise ValueError(f"Got {len(doc_ids)} document-id lists for {len(questions)} questions.")
    from .modeling_scaledown import CompressedDocuments

    dtype = model.get_input_embeddings().weight.dtype
    compressed = CompressedDocuments([store.memory(list(ids), dtype) for ids in doc_ids])
    return model.generate_from_compressed(questions, compressed, **kwargs)
