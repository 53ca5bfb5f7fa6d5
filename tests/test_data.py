import json
import subprocess
import sys

import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from tiny_models import make_decoder_tokenizer

from scaledown.training.data import (
    BM25Index,
    DataFormatError,
    chunk_text,
    make_index,
    prepare_data,
    read_hf_dataset,
    read_jsonl,
    read_squad,
    recall_at_k,
    split_by_article,
)


ARTICLES = {
    "Paris": [
        (
            "Paris is the capital of France. The Eiffel Tower stands in Paris on the Seine.",
            "Where is the Eiffel Tower?",
            "Paris",
        ),
        ("The Louvre museum in Paris holds the Mona Lisa.", "What does the Louvre hold?", "the Mona Lisa"),
    ],
    "Berlin": [
        (
            "Berlin is the capital of Germany. The Spree river flows through Berlin.",
            "Which river flows through Berlin?",
            "The Spree",
        ),
    ],
    "Amazon": [
        ("The Amazon is the largest rainforest on Earth, mostly in Brazil.", "Where is most of the Amazon?", "Brazil"),
    ],
    "Hamlet": [("Shakespeare wrote Hamlet around 1600 in London.", "Who wrote Hamlet?", "Shakespeare")],
}


@pytest.fixture
def squad_file(tmp_path):
    payload = {"version": "1.1", "data": []}
    for title, paragraphs in ARTICLES.items():
        payload["data"].append(
            {
                "title": title,
                "paragraphs": [
                    {
                        "context": c,
                        "qas": [{"id": f"{title}-{i}", "question": q, "answers": [{"text": a, "answer_start": 0}]}],
                    }
                    for i, (c, q, a) in enumerate(paragraphs)
                ],
            }
        )
    path = tmp_path / "mini-squad.json"
    path.write_text(json.dumps(payload))
    return path


def test_read_squad(squad_file):
    records = read_squad(squad_file)
    assert len(records) == 5
    first = records[0]
    assert first.question == "Where is the Eiffel Tower?" and first.gold_answers == ["Paris"]
    assert first.article == "mini-squad.json:Paris" and "Eiffel" in first.passages[0]


def test_read_squad_rejects_other_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(DataFormatError, match="bad.json.*data"):
        read_squad(bad)
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json: not valid JSON"):
        read_squad(bad)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"documents": ["d"]}', "`query`"),
        ('{"query": "q", "documents": "d"}', "`documents`"),
        ('{"query": "q", "documents": ["a", "b"], "reranking_scores": [1]}', "reranking_scores"),
        ('{"query": "q", "documents": ["a"], "answer": 3}', "`answer`"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "user.jsonl"
    path.write_text('{"query": "ok?", "documents": ["fine"], "answer": "yes"}\n\n' + line + "\n")
    with pytest.raises(DataFormatError, match=rf"user.jsonl:3: .*{message}"):
        read_jsonl(path)


def test_jsonl_and_datasets_sources():
    path_records = read_hf_dataset(
        Dataset.from_list([{"question": "q?", "docs": ["a", "b"], "answer": "a", "reranking_scores": [1.0, 0.0]}]),
        column_mapping={"question": "query", "docs": "documents"},
    )
    assert path_records[0].question == "q?" and path_records[0].passages == ["a", "b"]
    assert path_records[0].reranking_scores == [1.0, 0.0] and path_records[0].gold_answers == ["a"]


def test_chunks_respect_the_token_budget():
    tokenizer = make_decoder_tokenizer()
    text = " ".join(p for paragraphs in ARTICLES.values() for p, _, _ in paragraphs) * 3
    text += " " + "supercalifragilistic" * 30  # one sentence longer than a chunk
    chunks = chunk_text(text, tokenizer, 24)
    assert len(chunks) > 3
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) <= 24 or " " not in c for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_split_by_article_never_shares_an_article(squad_file):
    records = read_squad(squad_file)
    train, held = split_by_article(records, 0.4, seed=0)
    assert train and held and len(train) + len(held) == len(records)
    assert not {r.article for r in train} & {r.article for r in held}
    assert split_by_article(records, 0.4, seed=0) == (train, held)
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_by_article(records, 1.0, seed=0)


def test_bm25_finds_the_gold_passage():
    chunks = [p for paragraphs in ARTICLES.values() for p, _, _ in paragraphs]
    hits, scores = BM25Index(chunks).search(["Which river flows through Berlin?", "Who wrote Hamlet?"], k=2)
    assert chunks[hits[0][0]].startswith("Berlin") and chunks[hits[1][0]].startswith("Shakespeare")
    assert scores[0][0] >= scores[0][1]


def test_prepare_data_writes_leak_free_splits(squad_file, tmp_path):
    tokenizer = make_decoder_tokenizer()
    out = tmp_path / "prepared"
    dataset = prepare_data([f"squad:{squad_file}"], tokenizer, out, doc_max_length=24, num_train_documents=2,
                           num_eval_documents=3, held_out_fraction=0.4)  # fmt: skip
    reloaded = load_from_disk(str(out))
    assert set(reloaded) == {"train", "test"} and len(reloaded["train"]) == len(dataset["train"])
    train_articles, test_articles = set(reloaded["train"]["article"]), set(reloaded["test"]["article"])
    assert not train_articles & test_articles
    test_passages = {p for row in reloaded["test"] for p in row["source_passages"]}
    for row in reloaded["train"]:
        assert len(row["documents"]) <= 2
        assert not any(doc in passage for doc in row["documents"] for passage in test_passages)
    assert all(len(row["documents"]) <= 3 for row in reloaded["test"])
    assert recall_at_k(reloaded["train"].to_list()) >= 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]
    from scaledown.training.data import read_data_record

    record = read_data_record(out)  # what a model card may state about this data
    assert record["sources"] == [squad_file.name] and record["retriever"] == "bm25"
    assert record["doc_max_length"] == 24 and record["top_k"] == {"train": 2, "test": 3}
    assert record["questions"] == {"train": len(dataset["train"]), "test": len(dataset["test"])}
    assert record["split"].startswith("by article, 40% of the articles held out")


def test_interrupted_save_keeps_the_previous_output(squad_file, tmp_path, monkeypatch):
    tokenizer = make_decoder_tokenizer()
    out = tmp_path / "prepared"
    prepare_data([str(squad_file)], tokenizer, out, doc_max_length=24, held_out_fraction=0.4)
    before = load_from_disk(str(out))["train"]["id"]

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(DatasetDict, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data([str(squad_file)], tokenizer, out, doc_max_length=24, held_out_fraction=0.4, seed=1)
    assert load_from_disk(str(out))["train"]["id"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini-squad.json", "prepared"]  # no temporary left


def test_prepare_data_cli(squad_file, tmp_path):
    tokenizer_folder = tmp_path / "tok"
    make_decoder_tokenizer().save_pretrained(tokenizer_folder)
    out = tmp_path / "cli-prepared"
    result = subprocess.run(
        [sys.executable, "-m", "scaledown.cli", "prepare-data", "--source", str(squad_file), "--tokenizer",
         str(tokenizer_folder), "--output", str(out), "--doc-max-length", "24", "--held-out-fraction", "0.4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["splits"]["train"]["questions"] + summary["splits"]["test"]["questions"] == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "documents": ["a"]}\n{"query": 1}\n')
    result = subprocess.run(
        [sys.executable, "-m", "scaledown.cli", "prepare-data", "--source", str(bad), "--tokenizer",
         str(tokenizer_folder), "--output", str(tmp_path / "never")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "bad.jsonl:2" in result.stderr
    assert not (tmp_path / "never").exists()


def test_dense_retrieval_with_all_minilm(squad_file, tmp_path):
    from scaledown.offline_weights import minilm_path

    chunks = [p for paragraphs in ARTICLES.values() for p, _, _ in paragraphs]
    index = make_index(chunks, f"dense:{minilm_path()}")
    hits, scores = index.search(["Which river flows through Berlin?", "Who is the author of Hamlet?"], k=2)
    assert chunks[hits[0][0]].startswith("Berlin") and chunks[hits[1][0]].startswith("Shakespeare")
    assert scores[0][0] >= scores[0][1]
    out = tmp_path / "dense"
    dataset = prepare_data([str(squad_file)], make_decoder_tokenizer(), out, doc_max_length=24,
                           held_out_fraction=0.4, retriever=f"dense:{minilm_path()}")  # fmt: skip
    assert recall_at_k(dataset["train"].to_list()) >= 0.5
    with pytest.raises(ValueError, match="retriever"):
        make_index(chunks, "tfidf")


def test_held_out_questions_do_not_depend_on_the_training_sample_size(tmp_path):
    """Scaling `max_train_questions` up keeps the same held-out questions, so that runs of different sizes are
    evaluated on the same questions."""
    from scaledown.evaluation.benchmark import SAMPLE

    tokenizer = make_decoder_tokenizer()
    kwargs = {"doc_max_length": 24, "held_out_fraction": 0.3, "max_eval_questions": 4}
    small = prepare_data([str(SAMPLE)], tokenizer, tmp_path / "a", max_train_questions=3, **kwargs)
    large = prepare_data([str(SAMPLE)], tokenizer, tmp_path / "b", max_train_questions=9, **kwargs)
    assert len(small["train"]) == 3 and len(large["train"]) == 9
    assert small["test"]["id"] == large["test"]["id"] and len(small["test"]) == 4


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"doc_max_length": 0}, "`doc_max_length` must be a positive"),
        ({"num_train_documents": 0}, "`num_train_documents` must be a positive"),
        ({"num_eval_documents": -1}, "`num_eval_documents` must be a positive"),
        ({"held_out_fraction": 1.0}, "`held_out_fraction` must be between 0 and 1"),
        ({"max_eval_questions": 0}, "`max_eval_questions` must be positive"),
    ],
)
def test_prepare_data_refuses_settings_that_give_empty_data(squad_file, tmp_path, setting, message):
    """`--doc-max-length 0` used to exit 0 with one-word documents and recall 0 (robustness issue, row 7)."""
    with pytest.raises(ValueError, match=message):
        prepare_data([str(squad_file)], make_decoder_tokenizer(), tmp_path / "out", **setting)
    assert not (tmp_path / "out").exists()
