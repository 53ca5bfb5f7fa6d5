"""Where the demo's training gradient goes: per side (generator LoRA, compressor, relevance head + span selector),
the gradient norm of the demo's first question-answering batches before clipping, with the `<RR>` state's norm and the
relevance scores against the teacher's. `max_grad_norm` (1.0) clips the *total*: a side that dominates the total
shrinks every other side's step.

    python benchmarks/probes/grad_shares.py [--data outputs/demo/data-labelled] [--steps 4] \
        [--config '{"rerank_head_norm": false}']
"""

import argparse
import json
import statistics

from datasets import load_from_disk
from demo_setup import demo_model, demo_trainer, report

from scaledown.training.trainer import parameter_side


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/demo/data-labelled")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", default=None)
    parser.add_argument("--config", default="{}", help="Extra ScaleDownConfig arguments, JSON.")
    args = parser.parse_args()
    model = demo_model(**json.loads(args.config))
    rows = load_from_disk(args.data)["train"]
    trainer = demo_trainer(model, rows, "outputs/probe-grad-shares", args.steps)
    rows = rows.to_list()
    norms, scores, targets = [], [], []
    captured = {}
    hook = model.rerank_head.register_forward_hook(lambda m, i, o: captured.update(state=i[0].detach()))
    for step in range(args.steps):
        batch = trainer.data_collator(rows[4 * step : 4 * step + 4])
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        sides = {}
        for name, param in model.named_parameters():
            if param.grad is not None:
                side = parameter_side(name)
                sides[side] = sides.get(side, 0.0) + param.grad.float().pow(2).sum().item()
        total = sum(sides.values()) ** 0.5
        norms.append({"total": total, **{side: value**0.5 for side, value in sides.items()}})
        state = captured["state"]
        out = model.rerank_head(state).squeeze(-1)
        scores += out.tolist()
        targets += [t for t in batch["teacher_scores"].tolist()]
        captured["rr_norm"] = captured.get("rr_norm", []) + state.norm(dim=-1).tolist()
        trainer.optimizer.zero_grad()
    hook.remove()
    result = {
        "grad_norm_median": {k: round(statistics.median(n.get(k, 0.0) for n in norms), 3) for k in norms[0]},
        "rr_state_norm_median": round(statistics.median(captured["rr_norm"]), 2),
        "relevance_scores": {"mean": round(statistics.mean(scores), 3), "sd": round(statistics.pstdev(scores), 3)},
        "teacher_scores": {"mean": round(statistics.mean(targets), 3), "sd": round(statistics.pstdev(targets), 3)},
        "config": json.loads(args.config),
    }
    report(result, args)


if __name__ == "__main__":
    main()
