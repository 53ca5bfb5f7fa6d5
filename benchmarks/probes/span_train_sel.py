import math
import sys
import time

import torch
import torch.nn.functional as F


sys.path.insert(0, "benchmarks/probes")
from span_selmod import EM, Sel, batchify  # noqa: E402


torch.set_num_threads(2)
torch.manual_seed(0)
kind, ntrain, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
train = torch.load("outputs/span-probe/train16k.pt", weights_only=True)[:ntrain]
evals = {
    "test400": torch.load("outputs/span-probe/test400.pt", weights_only=True),
    "indep52": torch.load("outputs/span-probe/indep.pt", weights_only=True),
}


def loss_fn(logits, doc, tgt):
    logits = logits.masked_fill(~doc, -1e4)
    lse = torch.logsumexp(logits, -1)
    ans = torch.logsumexp(logits.masked_fill(tgt == 0, -1e4), -1)
    return (lse - ans).mean()


@torch.no_grad()
def evaluate(model, recs):
    model.eval()
    hit_c = hit_w = 0
    for s in range(0, len(recs), 64):
        h, pad, doc, tgt, em = batchify(recs[s : s + 64])
        logits = model(h, pad, em).masked_fill(~doc, -1e4)
        for i, r in enumerate(recs[s : s + 64]):
            f, n = r["first"], len(r["h"])
            lg = logits[i, f:n]
            t = r["target"][: n - f]
            m = n - f
            c = int(lg.argmax())
            st = max(0, min(c - 2, m - 8))
            hit_c += float(t[st : st + 8].sum() > 0)
            p = lg.softmax(-1)
            ws = F.avg_pool1d(p[None, None], 8, 1)[0, 0] if m >= 8 else p.sum()[None]
            st = int(ws.argmax())
            hit_w += float(t[st : st + 8].sum() > 0)
    model.train()
    return round(hit_c / len(recs), 3), round(hit_w / len(recs), 3)


model = Sel(kind)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
steps = epochs * math.ceil(len(train) / 32)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
t0 = time.time()
print(kind, ntrain, "init", {k: evaluate(model, v) for k, v in evals.items()}, flush=True)
for ep in range(epochs):
    perm = torch.randperm(len(train))
    tot = 0
    for s in range(0, len(train), 32):
        h, pad, doc, tgt, em = batchify([train[i] for i in perm[s : s + 32]])
        loss = loss_fn(model(h, pad, em), doc, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        tot += loss.item()
    print(
        kind,
        ntrain,
        "epoch",
        ep,
        round(tot / math.ceil(len(train) / 32), 3),
        {k: evaluate(model, v) for k, v in evals.items()},
        round(time.time() - t0),
        flush=True,
    )
torch.save(model.state_dict(), f"outputs/span-probe/{kind}-{ntrain}{'-em' if EM else ''}.pt")
