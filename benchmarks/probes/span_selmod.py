"""The selector probes' model and batching (shared by span_train_sel.py and span_e2e.py)."""

import os

import torch
import torch.nn as nn


W = 576  # SmolLM2-135M's width
EM = os.environ.get("EM") == "1"


class Sel(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(W)
        if kind == "linear":
            self.head = nn.Linear(W, 1)
        elif kind == "mlp":
            self.head = nn.Sequential(nn.Linear(W, 256), nn.GELU(), nn.Linear(256, 1))
        else:
            layers = int(kind[-1])
            d = 256
            self.inp = nn.Linear(W, d)
            self.enc = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, 4, 2 * d, 0.1, batch_first=True, norm_first=True), layers
            )
            self.head = nn.Linear(d, 1)
            self.em = nn.Embedding(2, d)

    def forward(self, h, pad, em=None):
        x = self.norm(h.float())
        if self.kind.startswith("attn"):
            x = self.inp(x)
            if EM and em is not None:
                x = x + self.em(em)
            x = self.enc(x, src_key_padding_mask=pad)
        return self.head(x).squeeze(-1)


def batchify(recs):
    L = max(len(r["h"]) for r in recs)
    h = torch.zeros(len(recs), L, W)
    pad = torch.ones(len(recs), L, dtype=torch.bool)
    doc = torch.zeros(len(recs), L, dtype=torch.bool)
    tgt = torch.zeros(len(recs), L)
    em = torch.zeros(len(recs), L, dtype=torch.long)
    for i, r in enumerate(recs):
        n = len(r["h"])
        h[i, :n] = r["h"].float()
        pad[i, :n] = False
        doc[i, r["first"] : n] = True
        tgt[i, r["first"] : n] = r["target"][: n - r["first"]]
        q = set(r["ids"][1 : r["first"] - 1].tolist())
        em[i, r["first"] : n] = torch.tensor([int(t in q) for t in r["ids"][r["first"] : n].tolist()])
    return h, pad, doc, tgt, em
