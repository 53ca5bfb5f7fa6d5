"""How much of the documents' information about the answer reaches the generator, scored by likelihood.

Match moves in steps of one question and needs the model to both know and say the answer; the likelihood of the gold
answer moves continuously. For each question the gold answer is scored (teacher-forced, mean negative log-likelihood
per token) twice: with the question's own retrieved documents and with the documents of another question (sharing no
document with it). The drop from the second to the first, the *document gain*, is what the documents tell the model
about the answer. It is measured for the compressed model (memory embeddings) and for the uncompressed base generator
(raw documents, same prompt); their ratio, the *gain share*, is the part of the raw documents' information that
survives compression: ~0 when the generator ignores the memory, 1 when the memory serves as well as the raw text.
"""

import contextlib

import torch

from ..processing_scaledown import check_positive
from .text import mean_and_stderr


@torch.no_grad()
def answer_nll(
    model,
    questions: list[str],
    documents: list[list[str]],
    answers: list[str],
    uncompressed: bool = False,
    batch_size: int = 8,
) -> list[float]:
    """Mean negative log-likelihood (nats per token) of each answer, teacher-forced after the generator's prompt.

    Args:
        model ([`ScaleDownForCausalLM`]): with its tokenizers.
        questions (`list[str]`), documents (`list[list[str]]`): as for `compress_documents`.
        answers (`list[str]`): one target per question (e.g. its first gold answer); the EOS token that training
            appends is not scored.
        uncompressed (`bool`): score with the base generator (adapters off) reading the raw documents instead of the
            compressed model reading memory embeddings.

    Returns:
        `list[float]`, one value per question.
    """
    check_positive(batch_size=batch_size)
    from ..processing_scaledown import (
        build_generator_inputs,
        memory_segments,
        raw_document_segments,
        validate_rag_inputs,
    )
    from ..training.losses import IGNORE_INDEX, answer_nll_per_row

    validate_rag_inputs(questions, documents)
    if len(answers) != len(questions):
        raise ValueError(f"Got {len(answers)} answers for {len(questions)} questions.")
    if not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError("Every answer must be a non-empty string.")
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    scores = []
    context = model.generator_adapters_disabled() if uncompressed else contextlib.nullcontext()
    with context:
        for start in range(0, len(questions), batch_size):
            batch_q = list(questions[start : start + batch_size])
            batch_d = [list(d) for d in documents[start : start + batch_size]]
            memory = None
            if uncompressed:
                segments = raw_document_segments(model.tokenizer, model.config, batch_d)
            else:
                compressed = model.compress_for_questions(batch_q, batch_d)
                segments = memory_segments(model.config, [m.shape[0] for m in compressed])
                memory = torch.cat([m.to(device) for m in compressed]) if any(batch_d) else None
            # Left padding puts every answer at the end, so only the last positions need logits (the full
            # vocabulary at every prompt position would dominate time and memory).
            inputs = build_generator_inputs(
                model.tokenizer, model.config, batch_q, segments, answers[start : start + batch_size], "left"
            )
            labels, mask = inputs["labels"], inputs["attention_mask"]
            if model.tokenizer.eos_token_id is not None:  # drop the appended EOS from the scored tokens
                labels[:, -1] = IGNORE_INDEX
            first = labels.ne(IGNORE_INDEX).long().argmax(1)  # each row's first answer token
            keep = int((labels.shape[1] - first).max()) + 1  # from the position that predicts it
            output = model(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=mask.to(device),
                position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(device),
                memory_embeddings=memory,
                logits_to_keep=keep,
            )
            scores += answer_nll_per_row(output.logits, labels[:, -keep:].to(device)).tolist()
    model.train(was_training)
    return scores


def foreign_documents(documents: list[list[str]]) -> list[list[str]]:
    """For each question, the documents of the next question (cyclically) that shares no document with it."""
    sets = [set(d) for d in documents]
    result = []
    for i, own in enumerate(sets):
        for step in range(1, len(documents)):
            j = (i + step) % len(documents)
            if documents[j] and not own & sets[j]:
                result.append(list(documents[j]))
                break
        else:
            raise ValueError(f"Question {i} shares a document with every other question: no control documents.")
    return result


def document_gain(
    model,
    rows: list[dict],
    num_documents: int = 10,
    batch_size: int = 8,
    with_baseline: bool = True,
    baseline: dict | None = None,
) -> dict:
    """Score the first gold answer of each row (dicts with `question`, `documents`, `gold_answers`) with its own and
    with foreign documents (see the module doc).

    Args:
        with_baseline (`bool`): also score the uncompressed base generator.
        baseline (`dict`, *optional*): the `uncompressed` entry of an earlier report on the same rows, reused instead
            of scoring the base generator again (it does not change during training).

    Returns:
        A JSON-able dict: per system (`compressed`, and `uncompressed` with `with_baseline`) the mean NLL with own and
        foreign documents and the document gain (mean ± standard error over questions), and `gain_share` (compressed
        gain / uncompressed gain). Rows without gold answers are skipped.
    """
    check_positive(num_documents=num_documents, batch_size=batch_size)
    rows = [r for r in rows if r.get("gold_answers")]
    if len(rows) < 2:
        raise ValueError("The document gain needs at least two questions with gold answers.")
    questions = [r["question"] for r in rows]
    own = [list(r["documents"])[:num_documents] for r in rows]
    foreign = foreign_documents(own)
    answers = [r["gold_answers"][0] for r in rows]
    if baseline is not None and baseline.get("questions") != len(rows):
        raise ValueError(f"The baseline scored {baseline.get('questions')} questions, these rows have {len(rows)}.")
    report = {"questions": len(rows), "num_documents": num_documents}
    for system in ["compressed"] + (["uncompressed"] if with_baseline and baseline is None else []):
        flag = system == "uncompressed"
        with_own = answer_nll(model, questions, own, answers, uncompressed=flag, batch_size=batch_size)
        with_foreign = answer_nll(model, questions, foreign, answers, uncompressed=flag, batch_size=batch_size)
        gain, stderr = mean_and_stderr([f - o for o, f in zip(with_own, with_foreign)])
        report[system] = {
            "questions": len(rows),
            "nll_own_documents": round(sum(with_own) / len(rows), 4),
            "nll_foreign_documents": round(sum(with_foreign) / len(rows), 4),
            "document_gain": round(gain, 4),
            "document_gain_stderr": round(stderr, 4) if stderr is not None else None,
        }
    if baseline is not None:
        report["uncompressed"] = dict(baseline)
    if "uncompressed" in report and report["uncompressed"]["document_gain"] > 0:
        report["gain_share"] = round(
            report["compressed"]["document_gain"] / report["uncompressed"]["document_gain"], 4
        )
    return report
