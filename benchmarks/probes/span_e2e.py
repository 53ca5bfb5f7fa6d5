"""Match on indep80 with selector windows, untrained generator reading layer-5 states at layer 5."""

import json
import sys
import time

import torch
import torch.nn.functional as F


sys.path.insert(0, "benchmarks/probes")
from datasets import load_from_disk
from span_selmod import Sel

from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.processing_scaledown import build_compressor_inputs


torch.set_num_threads(2)
kind, weights, ndocs = sys.argv[1], sys.argv[2], int(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "window"
model = ScaleDownForCausalLM.from_generator(
    str(smollm2_path()), num_compressor_layers=5, memory_injection_layer=5, memory_slots="chunk_mean"
)
model.eval()
cfg, tok = model.config, model.compressor_tokenizer
mem = set(cfg.compressor_memory_token_ids)
sel = Sel(kind)
sel.load_state_dict(torch.load(weights, weights_only=True), strict=False)  # probes saved before the em feature
sel.eval()
rows = load_from_disk("outputs/answer-match/indep80")["test"].to_list()
match, hits = [], []
t0 = time.time()
with torch.no_grad():
    for r in rows:
        docs = r["documents"][:ndocs]
        b = build_compressor_inputs(tok, cfg, [r["question"]] * len(docs), [[d] for d in docs])
        ids = b["compressor_input_ids"]
        h = model.compressor(
            input_ids=ids, attention_mask=b["compressor_attention_mask"], use_cache=False
        ).last_hidden_state
        memory = []
        conf = []
        for i in range(len(docs)):
            t = ids[i].tolist()
            first = t.index(cfg.document_separator_token_id) + 1
            end = next(j for j, x in enumerate(t) if x in mem)
            m = end - first
            lg = sel(h[i : i + 1, :end], torch.zeros(1, end, dtype=torch.bool))[0, first:end]
            p = lg.softmax(-1)
            if mode != "top":
                st = int(F.avg_pool1d(p[None, None], 8, 1)[0, 0].argmax()) if m >= 8 else 0
                pos = list(range(st, min(st + 8, m)))
            else:  # top-8 tokens in order
                pos = sorted(p.topk(min(8, m)).indices.tolist())
            memory.append(h[i, first:end][pos])
            conf.append(float(torch.logsumexp(lg[pos], 0)) if mode != "rankmax" else float(lg.max()))
        if mode.startswith("rank"):
            k = int(sys.argv[5])
            order = sorted(range(len(docs)), key=lambda j: -conf[j])[:k]
            memory = [memory[j] for j in order]
        memory = (
            torch.stack(memory)
            if all(len(x) == 8 for x in memory)
            else torch.nn.utils.rnn.pad_sequence(memory, batch_first=True)
        )
        ans = model.generate_from_compressed([r["question"]], [memory], max_new_tokens=32, do_sample=False)[0]
        match.append(float(any(a.strip() and a.lower() in ans.lower() for a in r["gold_answers"])))
        if len(match) % 20 == 0:
            print(len(match), sum(match), round(time.time() - t0), flush=True)
print(
    json.dumps(
        {
            "kind": kind,
            "ndocs": ndocs,
            "mode": mode,
            "match": round(sum(match) / len(match), 4),
            "n": len(match),
            "s": round(time.time() - t0),
        }
    )
)
