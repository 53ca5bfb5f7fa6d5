"""Does the relevance head learn within the demo's training? The head alone, on the compressor's fixed `<RR>` states
(the demo's question answering keeps the compressor fixed): the demo's 150 steps x 4 questions x 5 documents against
the teacher's scores (all-MiniLM-L6-v2, cosine x 10), AdamW, per setting (head: `linear` = OSCAR's bare readout,
`norm` = `ScaleDownRerankHead`; learning rate). Scored on held-out questions: MSE against the teacher, and how often
the head's top document holds a gold answer, next to BM25's order and the teacher's.

    python benchmarks/probes/rerank_head.py [--train outputs/demo/data-labelled] [--eval outputs/answer-match/indep80]
"""

import argparse

import torch
from datasets import load_from_disk
from demo_setup import demo_model, report
from transformers import AutoModel, AutoTokenizer, set_seed

from scaledown.evaluation.text import mean, spearman
from scaledown.modeling_scaledown import ScaleDownRerankHead
from scaledown.offline_weights import minilm_path
from scaledown.processing_scaledown import build_compressor_inputs
from scaledown.training.labeling import bi_encoder_scores


@torch.no_grad()
def rr_states(model, rows, documents: int) -> torch.Tensor:
    """`(len(rows), documents, width)`: the compressor's state at `<RR>` of every (question, document) pair."""
    states = []
    for row in rows:
        docs = row["documents"][:documents]
        inputs = build_compressor_inputs(model.compressor_tokenizer, model.config, [row["question"]] * len(docs),
                                         [[d] for d in docs])  # fmt: skip
        ids = inputs["compressor_input_ids"]
        hidden = model.compressor(input_ids=ids, attention_mask=inputs["compressor_attention_mask"]).last_hidden_state
        states.append(hidden[ids == model.config.rerank_token_id])
    return torch.stack(states).float()


def holds(row, index: int) -> bool:
    return any(a.lower() in row["documents"][index].lower() for a in row["gold_answers"] if a.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="outputs/demo/data-labelled")
    parser.add_argument("--eval", default="outputs/answer-match/indep80")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--settings", nargs="+", default=["linear:5e-5", "norm:5e-5", "linear:1e-3", "norm:1e-3"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    model = demo_model().eval()
    train = load_from_disk(args.train)["train"].to_list()[: 4 * args.steps]
    test = load_from_disk(args.eval)["test"].to_list()
    train_x = rr_states(model, train, 5)
    train_y = torch.tensor([r["teacher_scores"][:5] for r in train])
    test_x = rr_states(model, test, 10)
    encoder, encoder_tokenizer = (
        AutoModel.from_pretrained(str(minilm_path())).eval(),
        AutoTokenizer.from_pretrained(str(minilm_path())),
    )
    questions, documents = [r["question"] for r in test], [r["documents"][:10] for r in test]
    test_y = torch.tensor(bi_encoder_scores(encoder, encoder_tokenizer, questions, documents))

    def top1(scores: torch.Tensor) -> int:
        return sum(holds(row, int(scores[i].argmax())) for i, row in enumerate(test))

    result = {
        "rr_state_norm": round(train_x.norm(dim=-1).mean().item(), 1),
        "top_document_holds_answer": {
            "bm25": sum(holds(r, 0) for r in test),
            "teacher": top1(test_y),
            "any of 10": sum(any(holds(r, i) for i in range(10)) for r in test),
        },
        "questions": len(test),
        "settings": {},
    }
    width = train_x.shape[-1]
    for setting in args.settings:
        kind, learning_rate = setting.split(":")
        set_seed(0)
        head = ScaleDownRerankHead(width) if kind == "norm" else torch.nn.Linear(width, 1)
        torch.nn.init.normal_(head.score.weight if kind == "norm" else head.weight, std=0.02)
        optimizer = torch.optim.AdamW(head.parameters(), lr=float(learning_rate), weight_decay=0.0)
        for step in range(args.steps):
            x, y = train_x[4 * step : 4 * step + 4], train_y[4 * step : 4 * step + 4]
            loss = (head(x).squeeze(-1) - y).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            scores = head(test_x).squeeze(-1)
            result["settings"][setting] = {
                "test_mse": round((scores - test_y).pow(2).mean().item(), 3),
                "top_document_holds_answer": top1(scores),
                "spearman_with_teacher": round(
                    mean([spearman(p, r) for p, r in zip(scores.tolist(), test_y.tolist())]), 3
                ),
            }
        print(setting, result["settings"][setting], flush=True)
    report(result, args)


if __name__ == "__main__":
    main()
