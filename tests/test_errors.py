"""Unclear errors made clear: each bad input names the problem (and the row or field) and how to fix it; the command
line prints one line and exits with status 2 unless `--debug`."""

import json

import pytest
import torch
from tiny_models import make_generator, make_scaledown

from scaledown import ScaleDownConfig, ScaleDownForCausalLM
from scaledown.cli import error_line, main
from scaledown.processing_scaledown import check_positive, check_text
from scaledown.training.data import DataFormatError, read_jsonl, read_squad


LONE_SURROGATE = "Who wrote \ud800 Hamlet?"


def test_missing_local_folder_is_named_not_taken_for_a_hub_id(tmp_path):
    for missing in (tmp_path / "nope", "./no/such/folder", "~/no-such-scaledown-folder"):
        with pytest.raises(OSError, match="no such folder"):
            ScaleDownForCausalLM.from_pretrained(str(missing))


def test_folder_without_config_json_says_so(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(OSError, match="has no config.json: it is not a saved model folder"):
        ScaleDownForCausalLM.from_pretrained(tmp_path)


def test_plain_generator_folder_says_how_to_wrap_it(tmp_path):
    generator, _ = make_generator("llama")
    generator.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"holds a `llama` model, not a ScaleDown model.*from_generator"):
        ScaleDownForCausalLM.from_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="not a ScaleDown model"):
        ScaleDownConfig.from_pretrained(tmp_path / "llama")


def test_saved_folder_still_loads(tmp_path):
    model = make_scaledown()
    model.save_pretrained(tmp_path / "m")
    assert ScaleDownForCausalLM.from_pretrained(tmp_path / "m").config.model_type == "scaledown"


@pytest.mark.parametrize(
    "kwargs, field", [({"batch_size": -1}, "batch_size"), ({"bucket_size": 0}, "bucket_size")], ids=["batch", "bucket"]
)
def test_compress_documents_refuses_non_positive_sizes(rag_batch, kwargs, field):
    model = make_scaledown()
    with pytest.raises(ValueError, match=rf"`{field}` must be a positive integer"):
        model.compress_documents(*rag_batch, **kwargs)


def test_check_positive_and_check_text():
    check_positive(a=1, b=None, c=[1, 16])
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ValueError, match="`n` must be a positive integer"):
            check_positive(n=bad)
    with pytest.raises(ValueError, match="non-empty list"):
        check_positive(sizes=[])
    with pytest.raises(ValueError, match="non-empty list"):
        check_positive(sizes=[1, 0])
    check_text("ordinary text, accents é and emoji 🙂", "x")
    message = r"questions\[3\] is not valid Unicode text: surrogates not allowed at character 10"
    with pytest.raises(ValueError, match=message):
        check_text(LONE_SURROGATE, "questions[3]")


def test_benchmark_evaluate_and_likelihood_refuse_zero_sizes(rag_batch):
    from scaledown.evaluation.benchmark import run_benchmark, run_user_benchmark
    from scaledown.evaluation.likelihood import answer_nll
    from scaledown.evaluation.run import evaluate_model

    with pytest.raises(ValueError, match="`repetitions` must be"):
        run_benchmark("unused", repetitions=0)  # checked before anything loads
    with pytest.raises(ValueError, match="`batch_sizes` must be"):
        run_user_benchmark("unused", batch_sizes=[1, 0])
    model = make_scaledown()
    questions, documents = rag_batch
    rows = [{"question": q, "documents": d, "gold_answers": ["x"]} for q, d in zip(questions, documents)]
    with pytest.raises(ValueError, match="`batch_size` must be"):
        evaluate_model(model, rows, batch_size=0)
    with pytest.raises(ValueError, match="`batch_size` must be"):
        answer_nll(model, questions, documents, ["a", "b", "c"], batch_size=0)


def test_lone_surrogate_in_a_question_names_the_row(rag_batch):
    model = make_scaledown()
    questions, documents = rag_batch
    questions[1] = LONE_SURROGATE
    with pytest.raises(ValueError, match=r"questions\[1\] is not valid Unicode text"):
        model.generate_from_text(questions, documents, max_new_tokens=2)
    questions[1], documents[0][1] = "fine", LONE_SURROGATE
    with pytest.raises(ValueError, match=r"documents\[0\]\[1\] is not valid Unicode text"):
        model.compress_documents(questions, documents)


@pytest.mark.parametrize(
    "paragraphs, message",
    [
        (None, r"data\[0\].paragraphs must be a list, got NoneType"),
        ([{"context": "c", "qas": None}], r"paragraphs\[0\].qas must be a list"),
        ([{"context": "c", "qas": [{"question": "q?", "answers": None}]}], r"qas\[0\].answers must be a list"),
        (["just text"], r"paragraphs\[0\] has no `context` string"),
        ([{"context": "c", "qas": [{"question": LONE_SURROGATE, "answers": []}]}], r"qas\[0\].question is not valid"),
    ],
    ids=["paragraphs-null", "qas-null", "answers-null", "paragraph-not-object", "surrogate"],
)
def test_malformed_squad_names_the_field(tmp_path, paragraphs, message):
    path = tmp_path / "squad.json"
    # json.dumps escapes the lone surrogate as \ud800, which json.loads turns back into one (as a real file would).
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    with pytest.raises(DataFormatError, match=message):
        read_squad(path)


def test_jsonl_with_a_lone_surrogate_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"query": "q?", "documents": ["ok", LONE_SURROGATE]}) + "\n")
    with pytest.raises(DataFormatError, match=r"rows.jsonl:1: documents\[1\] is not valid Unicode text"):
        read_jsonl(path)


def test_training_names_a_missing_evaluation_split(tmp_path):
    from datasets import Dataset, DatasetDict

    from scaledown.training.run import DataArguments, ModelArguments, run_training

    folder = tmp_path / "data"
    rows = [{"question": "q", "documents": ["d"], "gold_answers": ["a"]}]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(folder)
    from scaledown.training import ScaleDownTrainingArguments

    args = ScaleDownTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True)
    data_args = DataArguments(dataset_dir=str(folder), eval_split="validation")
    with pytest.raises(ValueError, match=r"has no split 'validation' \(has \['train'\]\)"):
        run_training(ModelArguments(generator="unused"), data_args, args)


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("scaledown evaluate: error: ") and "no such folder" in err and "--debug" in err
    assert main(["benchmark", "--model", "unused", "--repetitions", "0"]) == 2
    assert "`repetitions` must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(OSError, match="no such folder"):
        main(["--debug", "evaluate", "--model", str(tmp_path / "missing"), "--data", str(tmp_path)])
    with pytest.raises(OSError, match="no such folder"):
        main(["evaluate", "--model", str(tmp_path / "missing"), "--data", str(tmp_path), "--debug"])


def test_error_line_names_unexpected_error_types():
    assert error_line(ValueError("bad\n  input")) == "bad input"
    assert error_line(KeyError("x")) == "KeyError: 'x'"
    assert error_line(RuntimeError()) == "RuntimeError: RuntimeError"


def test_verify_accepts_a_saved_folder_and_names_what_is_broken(tmp_path, capsys):
    import hashlib

    from safetensors.torch import load_file, save_file

    from scaledown.verification import verify_folder

    folder = tmp_path / "m"
    make_scaledown("llama", "encoder", enable_reranking=True).save_pretrained(folder)
    report = verify_folder(folder)
    assert report["ok"] and report["problems"] == [] and report["dtypes"] == ["F32"]
    weights = folder / "model.safetensors"
    assert report["sha256"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert main(["verify", str(folder), "--no-checksums"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]

    state = load_file(weights)
    name = next(n for n in state if n.startswith("generator.") and state[n].dim() == 2)
    dropped = next(n for n in state if n.startswith("compressor.") and n != name)
    state[name] = state[name][:, :-1].contiguous()  # a wrong shape
    state.pop(dropped)  # a missing tensor
    state["extra.weight"] = torch.zeros(2)  # an unexpected one
    state["projector.linear_1.bias"] = state["projector.linear_1.bias"].to(torch.bfloat16)  # mixed dtypes
    save_file(state, weights, metadata={"format": "pt"})
    problems = verify_folder(folder, checksums=False)["problems"]
    assert f"missing tensor {dropped}" in problems and "unexpected tensor extra.weight" in problems
    assert any(p.startswith(f"wrong shape {name}") for p in problems)
    assert "mixed floating dtypes in the weights: ['BF16', 'F32']" in problems
    assert main(["verify", str(folder), "--no-checksums"]) == 1

    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert any("not a readable safetensors file" in p for p in verify_folder(folder)["problems"])
