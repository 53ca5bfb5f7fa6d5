import json
import math

import pytest
from tiny_models import make_generator, make_scaledown

import scaledown.modeling_scaledown as modeling
from scaledown.evaluation import load_metric
from scaledown.evaluation.benchmark import analytic_flops, decoder_flops, resolve_dtype, run_benchmark
from scaledown.evaluation.run import evaluate_model, paired_match, summary_lines
from scaledown.evaluation.text import (
    exact_match,
    match,
    ndcg_at_k,
    normalize_answer,
    pearson,
    rouge_l,
    spearman,
    token_f1,
)


def test_answer_metrics():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert match("It was built in Paris, France.", ["paris"]) == 1.0
    assert match("It was built in Lyon.", ["Paris", "the French capital"]) == 0.0
    assert exact_match("The Spree.", ["Spree"]) == 1.0 and exact_match("the river Spree", ["Spree"]) == 0.0
    assert token_f1("the river Spree", ["Spree"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert rouge_l("x b c d", ["x c d e"]) == pytest.approx(0.75)
    assert rouge_l("", [""]) == 1.0 and token_f1("x", ["y"]) == 0.0


def test_ranking_metrics():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [2, 4, 7]) > 0.98
    assert math.isnan(pearson([1, 1], [1, 2]))
    assert ndcg_at_k([3.0, 2.0, 1.0], [5.0, 1.0, 0.0]) == pytest.approx(1.0)
    assert ndcg_at_k([1.0, 2.0, 3.0], [5.0, 1.0, 0.0]) < 0.7


def test_evaluate_metric_modules_load_offline_by_path():
    qa = load_metric("rag_qa")
    result = qa.compute(predictions=["It is Paris.", "no idea"], references=[["Paris"], ["Berlin"]])
    assert result["match"] == 0.5 and result["count"] == 2
    rr = load_metric("reranking")
    scores = rr.compute(predictions=[[0.9, 0.1, 0.5]], references=[[2.0, -1.0, 0.0]], k=3)
    assert scores["spearman"] == pytest.approx(1.0) and scores["ndcg@3"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Unknown metric"):
        load_metric("bleu")


def test_paired_match_counts():
    paired = paired_match([1, 0, 1, 0], [0, 0, 1, 1])
    assert paired["match_difference"] == 0.0
    assert (paired["compressed_only"], paired["uncompressed_only"], paired["both"], paired["neither"]) == (1, 1, 1, 1)


def test_evaluate_model_side_by_side():
    model = make_scaledown("llama", enable_reranking=True)
    rows = [
        {"question": "Capital of France?", "documents": ["Paris is the capital of France.", "Berlin."],
         "gold_answers": ["Paris"], "teacher_scores": [2.0, -1.0]},
        {"question": "Who wrote Hamlet?", "documents": ["Shakespeare wrote Hamlet."], "gold_answers": ["Shakespeare"],
         "teacher_scores": [1.0]},
        {"question": "Where?", "documents": [], "gold_answers": []},
    ]  # fmt: skip
    # The teacher is the base generator reading the raw documents: give it exactly the baseline's answers.
    baseline = model.generate_uncompressed([r["question"] for r in rows], [r["documents"] for r in rows],
                                           max_new_tokens=6)  # fmt: skip
    for row, answer in zip(rows, baseline):
        row["teacher_answer"] = answer
    report = evaluate_model(model, rows, batch_size=2, num_documents=10, max_new_tokens=6, with_document_gain=True)
    assert report["questions"] == 3 and report["settings"]["max_new_tokens"] == 6
    assert report["document_gain"]["questions"] == 2 and "uncompressed" in report["document_gain"]
    gain = report["document_gain"]["compressed"]["document_gain"]
    assert any(line.startswith("Does the generator read") and f"{gain:.4f}".rstrip("0") in line
               for line in summary_lines(report))  # fmt: skip
    assert report["uncompressed"]["teacher_fidelity"]["rouge_l"] == 1.0  # same prompt, same decoding
    assert set(report["compressed"]["gold"]) >= {"match", "exact_match", "f1", "rouge_l"}
    assert report["compressed"]["gold"]["count"] == 2  # the question without gold answers is not scored
    assert report["paired"]["questions"] == 2
    assert report["reranking"]["count"] == 2
    assert [len(r["rerank_scores"]) for r in report["records"]] == [2, 1, 0]
    rows_of = {line.split(" | ")[0].lstrip("| "): line for line in summary_lines(report) if line.startswith("| ")}
    assert {"ScaleDown (online compression)", "uncompressed base generator (raw documents)"} <= set(rows_of)
    paired = report["paired"]["match_difference"]
    assert f"| {float(paired):.4f}".rstrip("0").rstrip(".") + " ± " in rows_of["ScaleDown (online compression)"]
    json.dumps(report)  # JSON-able
    baseline_only = evaluate_model(model, rows[:2], num_documents=10, max_new_tokens=6, with_compressed=False)
    assert "compressed" not in baseline_only and "paired" not in baseline_only
    assert [r["uncompressed"] for r in baseline_only["records"]] == baseline[:2]
    assert not any("compressed" in r for r in baseline_only["records"])


def test_analytic_flops_favour_compression_on_long_documents():
    model = make_scaledown("llama", doc_max_length=128, num_memory_tokens=8, query_max_length=64)
    questions = ["word " * 60] * 2
    documents = [["text " * 120] * 10] * 2
    flops = analytic_flops(model, questions, documents, new_tokens=32)
    assert flops["ratio"] > 1.5 and flops["prompt_tokens_uncompressed"] > 2 * flops["prompt_tokens_compressed"]
    assert flops["compressed"] == pytest.approx(flops["compressed_compressor"] + flops["compressed_generator"])
    config = model.generator.config
    one = decoder_flops(config, 1, 0, [1], 0, lm_head=False)
    d, ff = config.hidden_size, config.intermediate_size
    heads, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    assert one == pytest.approx(2 * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ff) + 4 * heads * hd)


def test_run_benchmark_writes_json_and_plot(tmp_path):
    model = make_scaledown("llama", doc_max_length=128, num_memory_tokens=8, query_max_length=64)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    result = run_benchmark(
        folder,
        batch_sizes=[1, 2],
        repetitions=1,
        new_tokens=4,
        output_dir=tmp_path / "bench",
        profile_flops=False,
        dtype="auto",
        num_documents=5,
    )  # fmt: skip (fits 1,024 positions)
    summary = result["summary"]["per_batch_size"]
    assert set(summary) == {"1", "2"}
    for entry in summary.values():
        assert entry["speedup"] > 0 and entry["compressed_seconds"] > 0 and entry["flops_ratio_analytic"] > 1
        assert entry["peak_memory_mib"]["uncompressed"] > 0
    assert (tmp_path / "bench" / "benchmark.json").is_file() and (tmp_path / "bench" / "benchmark.png").is_file()
    assert result["summary"]["settings"]["compressor"] == "n_layers (2 layers)"
    assert result["summary"]["settings"]["dtype"] == resolve_dtype("auto", None)  # bfloat16 on AVX512-BF16 CPUs


def test_benchmark_table_shows_memory_only_when_measured():
    from scaledown.report import benchmark_table

    settings = {"num_documents": 10, "doc_tokens": 128, "query_tokens": 128, "new_tokens": 32, "device": "cpu",
                "dtype": "float32", "repetitions": 1}  # fmt: skip
    timed = {"uncompressed_seconds": 4.0, "compressed_seconds": 2.0, "speedup": 2.0, "flops_ratio_analytic": 3.1}
    plain = benchmark_table({"settings": settings, "per_batch_size": {"1": timed}})
    assert "peak memory" not in plain[2] and plain[-1] == "| 1 | 4 | 2 | 2× | 3.1× |"
    memory = {"peak_memory_mib": {"compressed": 60.0, "uncompressed": 120.0}}
    measured = benchmark_table({"settings": settings, "per_batch_size": {"1": {**timed, **memory}}})
    assert "peak memory" in measured[2] and measured[-1].endswith("| 60 / 120 |")


def test_benchmark_dtype_resolution(monkeypatch):
    monkeypatch.setattr(modeling, "has_native_bfloat16", lambda device: True)
    assert resolve_dtype("auto", None) == "bfloat16"
    monkeypatch.setattr(modeling, "has_native_bfloat16", lambda device: False)
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype(None, None) is None and resolve_dtype("float32", None) == "float32"
    with pytest.raises(ValueError, match="Unknown dtype 'float33'"):
        resolve_dtype("float33", None)
    with pytest.raises(ValueError, match="Unknown dtype 'Tensor'"):
        resolve_dtype("Tensor", None)


def test_user_path_benchmark_cli_writes_ratios_first_token_and_memory(tmp_path, capsys):
    from scaledown.cli import main

    generator, tokenizer = make_generator("llama")
    generator.save_pretrained(tmp_path / "generator")
    tokenizer.save_pretrained(tmp_path / "generator")
    model = make_scaledown("llama", doc_max_length=128, num_memory_tokens=8, query_max_length=64)
    model.save_pretrained(tmp_path / "model")
    argv = ["benchmark", "--model", str(tmp_path / "model"), "--generator", str(tmp_path / "generator"),
            "--batch-sizes", "1", "3", "--repetitions", "1", "--new-tokens", "4", "--dtypes", "float32",
            "--num-documents", "3", "--query-tokens", "16", "--output-dir", str(tmp_path / "bench")]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((tmp_path / "bench" / "benchmark-user.json").read_text())
    assert result["settings"]["path"] == "user"
    assert set(printed["float32"]) == set(result["per_dtype"]["float32"]) == {"1", "3"}
    for entry in result["per_dtype"]["float32"].values():
        assert entry["speedup"] > 0 and entry["first_token_speedup"] > 0 and entry["flops_ratio_analytic"] > 1
        # Timings are positive numbers; their order is not asserted (a loaded machine can invert 1 token vs 4).
        assert entry["compressed_first_token_seconds"] > 0 and entry["uncompressed_first_token_seconds"] > 0
        assert set(entry["compressed_stages_seconds"]) == {"compress_documents", "prompt_and_prefill", "decode"}
        assert all(v >= 0 for v in entry["compressed_stages_seconds"].values())
        decode = entry["compressed_stages_seconds"]["decode"]
        assert entry["decode_bound"] == (round(entry["uncompressed_seconds"] / decode, 3) if decode else None)
        assert entry["peak_memory_mib"]["uncompressed"] > 0 and entry["peak_memory_mib"]["compressed"] > 0
    assert (tmp_path / "bench" / "benchmark-user.png").is_file()
    table = (tmp_path / "bench" / "benchmark-user.md").read_text()
    speedup = result["per_dtype"]["float32"]["3"]["speedup"]
    assert "| float32 | 3 | " in table and f"| {speedup:.2f}".rstrip("0").rstrip(".") + "× (" in table


def test_decode_bound_is_the_speed_up_with_free_compression_and_prefill():
    """The ceiling divides the uncompressed answer's time by the compressed path's decoding alone."""
    from scaledown.evaluation.benchmark import decode_bound

    stages = {"compress_documents": 0.3, "prompt_and_prefill": 0.4, "decode": 1.5}
    assert decode_bound(3.0, stages) == 2.0
    assert decode_bound(3.0, {**stages, "decode": 0.0}) is None


def test_user_path_benchmark_times_offline_and_pruned_side_by_side(tmp_path):
    """`--systems offline pruned`: the offline model from stored vectors (and with its compression), and the
    sentence-pruning baseline, timed in the same interleaved runs, each with its speed-up and analytic FLOPs ratio."""
    from scaledown.evaluation.benchmark import _user_offline, run_user_benchmark

    generator, tokenizer = make_generator("llama")
    generator.save_pretrained(tmp_path / "generator")
    tokenizer.save_pretrained(tmp_path / "generator")
    model = make_scaledown("llama", doc_max_length=128, num_memory_tokens=8, query_max_length=64)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="Unknown extra systems"):
        run_user_benchmark(tmp_path / "model", extra_systems=["pruning"])
    result = run_user_benchmark(
        tmp_path / "model", generator=str(tmp_path / "generator"), batch_sizes=[2], dtypes=["float32"],
        repetitions=1, num_documents=3, query_tokens=16, new_tokens=3, measure_memory=False,
        extra_systems=["offline", "pruned"],
    )  # fmt: skip
    entry = result["per_dtype"]["float32"]["2"]
    for name in ("offline", "offline_with_compression", "pruned"):
        assert entry[f"{name}_seconds"] > 0 and entry[f"{name}_speedup"] > 0
    # Stored vectors cost the generator only: a higher FLOPs ratio than compressing first; pruning cuts tokens too.
    assert entry["offline_flops_ratio_analytic"] > entry["offline_with_compression_flops_ratio_analytic"] > 1
    assert entry["pruned_flops_ratio_analytic"] > 1
    from scaledown.report import user_benchmark_markdown

    table = user_benchmark_markdown(result)
    assert "offline, stored vectors speed-up" in table and "sentence pruning speed-up" in table
    # The store path answers exactly as compressing on the spot does.
    offline = make_scaledown("llama", query_dependent=False)
    questions, documents = ["Capital of France?"], [["Paris is the capital of France.", "Berlin."]]
    stored = {}
    first = _user_offline(offline, stored, questions, documents, 3)
    assert len(stored) == 1
    assert first == _user_offline(offline, stored, questions, documents, 3)
    assert first == offline.generate_from_text(questions, documents, max_new_tokens=3, min_new_tokens=3)
