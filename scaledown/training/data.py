"""`scaledown prepare-data`: QA data -> chunked document collections -> BM25 top-k -> a `datasets.DatasetDict`.

Sources:

* SQuAD-format JSON (`data` -> `paragraphs` -> `context`, `qas`), e.g. the SQuAD v1.1 dev set and SQuADShifts;
* JSONL with one `{"query", "documents": [...], "answer"?, "reranking_scores"?}` object per line (what users bring);
* any `datasets` dataset, given with a column mapping onto those JSONL names.

Questions are split into train / held-out **by article** (a SQuAD title, or a JSONL `article` field, else the record
itself) before any retrieval, and each split retrieves only from its own collection, so no passage leaks across.
"""

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging

from ..processing_scaledown import check_text


logger = logging.get_logger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class QARecord:
    """One question with its source passages (SQuAD) or its own documents (JSONL)."""

    id: str
    question: str
    article: str
    passages: list[str]
    gold_answers: list[str] = field(default_factory=list)
    reranking_scores: list[float] | None = None


class DataFormatError(ValueError):
    """Malformed input, with the file and line (or record) that holds it."""


def read_squad(path: str | os.PathLike) -> list[QARecord]:
    """Read a SQuAD-format JSON file: one record per question, its passage as the article's source text."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DataFormatError(f"{path}: a SQuAD file needs a top-level `data` list.")
    records = []
    for a, article in enumerate(payload["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict):
            raise DataFormatError(f"{where} must be an object with `paragraphs`, got {type(article).__name__}.")
        title = str(article.get("title", f"article-{a}"))
        for p, paragraph in enumerate(_squad_list(article, "paragraphs", where)):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str):
                raise DataFormatError(f"{where} has no `context` string.")
            check_text(context, f"{where}.context", DataFormatError)
            for q, qa in enumerate(_squad_list(paragraph, "qas", where)):
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise DataFormatError(f"{where}.qas[{q}] has no `question` string.")
                check_text(qa["question"], f"{where}.qas[{q}].question", DataFormatError)
                answers = [
                    ans["text"]
                    for ans in _squad_list(qa, "answers", f"{where}.qas[{q}]")
                    if isinstance(ans, dict) and isinstance(ans.get("text"), str)
                ]
                records.append(
                    QARecord(
                        id=str(qa.get("id", f"{a}-{p}-{q}")),
                        question=qa["question"],
                        article=f"{path.name}:{title}",
                        passages=[context],
                        gold_answers=list(dict.fromkeys(answers)),
                    )
                )
    return records


def _squad_list(obj: dict, key: str, where: str) -> list:
    """`obj[key]` as a list (absent: empty), or a `DataFormatError` naming where it is not one."""
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise DataFormatError(f"{where}.{key} must be a list, got {type(value).__name__}.")
    return value


def _record_from_mapping(obj: dict, where: str, index: int) -> QARecord:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    question = obj.get("query")
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(f"{where}: `query` must be a non-empty string.")
    documents = obj.get("documents")
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise DataFormatError(f"{where}: `documents` must be a list of strings.")
    check_text(question, f"{where}: `query`", DataFormatError)
    for j, document in enumerate(documents):
        check_text(document, f"{where}: documents[{j}]", DataFormatError)
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, (str, list)):
        raise DataFormatError(f"{where}: `answer` must be a string or a list of strings.")
    answers = [answer] if isinstance(answer, str) else list(answer or [])
    scores = obj.get("reranking_scores")
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != len(documents):
            raise DataFormatError(f"{where}: `reranking_scores` must hold one number per document.")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            raise DataFormatError(f"{where}: `reranking_scores` must be numbers.")
        scores = [float(s) for s in scores]
    identifier = str(obj.get("id", index))
    return QARecord(
        id=identifier,
        question=question,
        article=str(obj.get("article", identifier)),
        passages=list(documents),
        gold_answers=answers,
        reranking_scores=scores,
    )


def read_jsonl(path: str | os.PathLike) -> list[QARecord]:
    """Read `{"query", "documents", "answer"?, "reranking_scores"?, "id"?, "article"?}` lines; blank lines are
    skipped, anything malformed raises a `DataFormatError` naming the file and line."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{where}: not valid JSON ({error.msg}).") from None
            records.append(_record_from_mapping(obj, where, number))
    if not records:
        raise DataFormatError(f"{path}: no records.")
    return records


def read_hf_dataset(dataset, column_mapping: dict[str, str] | None = None, name: str = "dataset") -> list[QARecord]:
    """Read a `datasets.Dataset` whose columns map (through `column_mapping`, e.g. `{"question": "query"}`) onto the
    JSONL fields."""
    mapping = dict(column_mapping or {})
    records = []
    for index, row in enumerate(dataset):
        obj = {mapping.get(key, key): value for key, value in row.items()}
        records.append(_record_from_mapping(obj, f"{name}[{index}]", index))
    return records


def read_source(source: str) -> list[QARecord]:
    """`squad:PATH`, `jsonl:PATH` or a bare path (`.jsonl` -> JSONL, else SQuAD JSON)."""
    kind, _, path = source.partition(":") if source.split(":", 1)[0] in ("squad", "jsonl") else ("", "", source)
    if not Path(path).is_file():
        raise FileNotFoundError(f"Data source {path!r} does not exist.")
    if kind == "jsonl" or (not kind and path.endswith(".jsonl")):
        return read_jsonl(path)
    return read_squad(path)


def chunk_text(text: str, tokenizer, max_tokens: int) -> list[str]:
    """Split `text` into chunks of at most `max_tokens` tokenizer tokens, on sentence boundaries where possible
    (a longer sentence is cut on word boundaries)."""

    def length(piece: str) -> int:
        return len(tokenizer(piece, add_special_tokens=False)["input_ids"])

    chunks, current = [], ""
    for sentence in (s for s in _SENTENCE_END.split(text.strip()) if s):
        candidate = f"{current} {sentence}" if current else sentence
        if length(candidate) <= max_tokens:
            current = candidate
            continue
        if current:
            chunks.append(current)
        current = ""
        if length(sentence) <= max_tokens:
            current = sentence
            continue
        for word in sentence.split():
            candidate = f"{current} {word}" if current else word
            if length(candidate) <= max_tokens or not current:
                current = candidate
            else:
                chunks.append(current)
                current = word
    if current:
        chunks.append(current)
    return chunks


def split_by_article(records: list[QARecord], held_out_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train / held-out split of whole articles."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"`held_out_fraction` must be in [0, 1), got {held_out_fraction}.")
    articles = sorted({r.article for r in records})
    random.Random(seed).shuffle(articles)
    n_held = round(len(articles) * held_out_fraction)
    if held_out_fraction > 0 and n_held == 0 and len(articles) > 1:
        n_held = 1
    held = set(articles[:n_held])
    return [r for r in records if r.article not in held], [r for r in records if r.article in held]


class BM25Index:
    """BM25 over a collection of chunks (the `bm25s` package), English stop words removed."""

    def __init__(self, chunks: list[str]):
        import bm25s

        self._bm25s = bm25s
        self.chunks = chunks
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(chunks, stopwords="en", show_progress=False), show_progress=False)

    def search(self, queries: list[str], k: int) -> tuple[list[list[int]], list[list[float]]]:
        k = min(k, len(self.chunks))
        tokens = self._bm25s.tokenize(queries, stopwords="en", show_progress=False)
        ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return ids.tolist(), [[float(s) for s in row] for row in scores]


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised mean-pooled last hidden states (the sentence-transformers recipe of all-MiniLM-L6-v2)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt"
        ).to(device)
        hidden = model(**encoded).last_hidden_state.float()
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 1)


class DenseIndex:
    """Dense retrieval with a sentence encoder (any `AutoModel` folder or hub id, e.g. all-MiniLM-L6-v2): cosine
    similarity of mean-pooled embeddings."""

    def __init__(self, chunks: list[str], encoder: str):
        from transformers import AutoModel, AutoTokenizer

        self.chunks = chunks
        self.tokenizer = AutoTokenizer.from_pretrained(encoder)
        self.model = AutoModel.from_pretrained(encoder).eval()
        self.embeddings = sentence_embeddings(self.model, self.tokenizer, chunks)

    def search(self, queries: list[str], k: int) -> tuple[list[list[int]], list[list[float]]]:
        k = min(k, len(self.chunks))
        scores, ids = (sentence_embeddings(self.model, self.tokenizer, queries) @ self.embeddings.T).topk(k, dim=-1)
        return ids.tolist(), scores.tolist()


def make_index(chunks: list[str], retriever: str = "bm25"):
    """`"bm25"` or `"dense:<encoder folder or hub id>"`."""
    if retriever == "bm25":
        return BM25Index(chunks)
    if retriever.startswith("dense:"):
        return DenseIndex(chunks, retriever.split(":", 1)[1])
    raise ValueError(f"`retriever` must be 'bm25' or 'dense:<encoder>', got {retriever!r}.")


def build_split(
    records: list[QARecord],
    tokenizer,
    doc_max_length: int,
    top_k: int,
    retrieve: str = "auto",
    collection: list[QARecord] | None = None,
    retriever: str = "bm25",
):
    """Rows for the questions of `records`. `retrieve`: `"pool"` (BM25 over the chunks of every passage of
    `collection`, by default `records`), `"own"` (each record keeps its own documents, chunked) or `"auto"` (pool
    unless every record brings `reranking_scores`)."""
    if retrieve == "auto":
        retrieve = "own" if records and all(r.reranking_scores is not None for r in records) else "pool"
    rows = []
    if retrieve == "own":
        for r in records:
            docs, scores = [], []
            for i, passage in enumerate(r.passages):
                pieces = chunk_text(passage, tokenizer, doc_max_length)
                docs += pieces
                scores += [r.reranking_scores[i]] * len(pieces) if r.reranking_scores else [0.0] * len(pieces)
            rows.append(_row(r, docs[:top_k], [f"{r.id}/{j}" for j in range(len(docs))][:top_k], scores[:top_k]))
        return rows
    if retrieve != "pool":
        raise ValueError(f"`retrieve` must be 'auto', 'pool' or 'own', got {retrieve!r}.")
    chunk_ids, chunks, seen = [], [], {}
    for r in records if collection is None else collection:
        for passage in r.passages:
            key = hashlib.sha1(passage.encode()).hexdigest()
            if key in seen:
                continue
            pieces = chunk_text(passage, tokenizer, doc_max_length)
            seen[key] = True
            chunk_ids += [f"{key[:12]}/{j}" for j in range(len(pieces))]
            chunks += pieces
    if not chunks:
        return [_row(r, [], [], []) for r in records]
    index = make_index(chunks, retriever)
    hits, scores = index.search([r.question for r in records], top_k)
    for r, row_hits, row_scores in zip(records, hits, scores):
        rows.append(_row(r, [chunks[i] for i in row_hits], [chunk_ids[i] for i in row_hits], row_scores))
    return rows


def _row(record: QARecord, docs, doc_ids, scores) -> dict:
    return {
        "id": record.id,
        "question": record.question,
        "article": record.article,
        "documents": list(docs),
        "document_ids": list(doc_ids),
        "retrieval_scores": [float(s) for s in scores],
        "gold_answers": list(record.gold_answers),
        "source_passages": list(record.passages) if record.reranking_scores is None else [],
    }


def recall_at_k(rows: list[dict]) -> float:
    """Share of questions with a gold answer whose retrieved documents contain one of them (case-insensitive)."""
    hits = total = 0
    for row in rows:
        if not row["gold_answers"]:
            continue
        total += 1
        text = " ".join(row["documents"]).lower()
        hits += any(answer.lower() in text for answer in row["gold_answers"])
    return hits / total if total else float("nan")


DATA_RECORD = "scaledown_data.json"
# The shipped SQuAD v1.1 dev sample (CC BY-SA 4.0): the offline default of the demo, pretraining and benchmarks.
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "squad_v1.1_dev_sample.json"


def read_data_record(folder: str | os.PathLike) -> dict:
    """What `prepare-data` (and `label`) recorded about a dataset folder: sources, retriever, chunking, split, teacher.
    Empty for a folder written by something else."""
    path = Path(folder) / DATA_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def save_dataset_atomically(dataset_dict, output_dir: str | os.PathLike, record: dict | None = None) -> Path:
    """`save_to_disk` into a temporary sibling folder, then rename: an interrupted run leaves nothing half-written.
    `record`: facts about the data, written beside it as `scaledown_data.json` (see [`read_data_record`])."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        dataset_dict.save_to_disk(str(tmp))
        if record is not None:
            (tmp / DATA_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if output_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-old-", dir=output_dir.parent))
            os.replace(output_dir, backup / "old")
            os.replace(tmp, output_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


@dataclass
class PrepareDataArguments:
    """`scaledown prepare-data`: QA data -> chunks -> retrieval -> dataset on disk (see [`prepare_data`])."""

    source: list[str] = field(
        default_factory=list, metadata={"help": "squad:PATH, jsonl:PATH or a path; several allowed."}
    )
    tokenizer: str = field(default=None, metadata={"help": "Generator tokenizer (hub id or folder) for chunking."})
    output: str = field(default=None, metadata={"help": "Output folder (datasets save_to_disk, written atomically)."})
    doc_max_length: int = field(default=128, metadata={"help": "Tokens per document chunk."})
    num_train_documents: int = field(default=5, metadata={"help": "Documents retrieved per training question."})
    num_eval_documents: int = field(default=10, metadata={"help": "Documents retrieved per held-out question."})
    held_out_fraction: float = field(default=0.2, metadata={"help": "Share of articles held out."})
    max_train_questions: int | None = field(default=None, metadata={"help": "Sample at most this many train ones."})
    max_eval_questions: int | None = field(default=None, metadata={"help": "Sample at most this many held-out ones."})
    retrieve: str = field(default="auto", metadata={"help": "Retrieval mode: auto, pool or own."})
    seed: int = field(default=0, metadata={"help": "Seed of the split and the sampling."})
    retriever: str = field(default="bm25", metadata={"help": "bm25, or dense:<sentence encoder folder or hub id>."})

    def __post_init__(self):
        if not self.source:
            raise ValueError("`--source` is required (squad:PATH, jsonl:PATH or a path).")
        for name in ("tokenizer", "output"):
            if not getattr(self, name):
                raise ValueError(f"`--{name}` is required.")
        if self.retrieve not in ("auto", "pool", "own"):
            raise ValueError(f"`--retrieve` must be auto, pool or own, got {self.retrieve!r}.")


def prepare_data(
    sources: list[str],
    tokenizer,
    output_dir: str | os.PathLike,
    doc_max_length: int = 128,
    num_train_documents: int = 5,
    num_eval_documents: int = 10,
    held_out_fraction: float = 0.2,
    max_train_questions: int | None = None,
    max_eval_questions: int | None = None,
    retrieve: str = "auto",
    seed: int = 0,
    records: list[QARecord] | None = None,
    retriever: str = "bm25",
):
    """Read `sources` (and/or ready `records`), split by article, chunk, retrieve, and save a `DatasetDict` with
    `train` and `test` splits to `output_dir`. Returns the `DatasetDict`."""
    from datasets import Dataset, DatasetDict

    for name, value in (
        ("doc_max_length", doc_max_length),
        ("num_train_documents", num_train_documents),
        ("num_eval_documents", num_eval_documents),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive number of tokens / documents, got {value!r}.")
    for name, value in (("max_train_questions", max_train_questions), ("max_eval_questions", max_eval_questions)):
        if value is not None and value < 1:
            raise ValueError(f"`{name}` must be positive (or unset for all questions), got {value!r}.")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"`held_out_fraction` must be between 0 and 1 (exclusive), got {held_out_fraction!r}.")
    records = list(records or [])
    given_records = bool(records)
    for source in sources:
        records += read_source(source)
    if not records:
        raise ValueError("No data: give at least one source.")
    train, held_out = split_by_article(records, held_out_fraction, seed)
    splits = {}
    for name, split, k, limit in (
        ("train", train, num_train_documents, max_train_questions),
        ("test", held_out, num_eval_documents, max_eval_questions),
    ):
        # The collection is every passage of the split; only the questions are sampled, each split with its own
        # generator: the held-out questions do not depend on how many training questions are asked for.
        rng = random.Random(f"{seed}:{name}")
        questions = rng.sample(split, limit) if limit is not None and len(split) > limit else split
        rows = build_split(questions, tokenizer, doc_max_length, k, retrieve, collection=split, retriever=retriever)
        if rows:
            splits[name] = Dataset.from_list(rows)
            logger.info(f"{name}: {len(rows)} questions, recall@{k} = {recall_at_k(rows):.3f}")
    dataset = DatasetDict(splits)
    record = {
        "sources": [os.path.basename(s.split(":", 1)[-1]) for s in sources] + (["records"] if given_records else []),
        "split": f"by article, {held_out_fraction:.0%} of the articles held out (seed {seed})",
        "retriever": retriever,
        "retrieve": retrieve,
        "doc_max_length": doc_max_length,
        "top_k": {"train": num_train_documents, "test": num_eval_documents},
        "questions": {name: len(split) for name, split in splits.items()},
    }
    save_dataset_atomically(dataset, output_dir, record)
    return dataset
