"""Cache layer-5 compressor states of (question, answer-bearing document) pairs for selector probes."""

import sys
import time

import torch
from datasets import load_from_disk


sys.path.insert(0, "benchmarks")
from token_selection import answer_tokens

from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path
from scaledown.processing_scaledown import build_compressor_inputs


torch.set_num_threads(2)
split, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = sys.argv[4] if len(sys.argv) > 4 else "outputs/reading/squad-all"
model = ScaleDownForCausalLM.from_generator(
    str(smollm2_path()), num_compressor_layers=5, memory_injection_layer=5, memory_slots="chunk_mean"
)
model.eval()
cfg, tok = model.config, model.compressor_tokenizer
mem = set(cfg.compressor_memory_token_ids)
rows = load_from_disk(data)[split]
if split == "train":
    rows = rows.shuffle(seed=0)
rows = rows.select(range(min(count * 2, len(rows)))).to_list()
qs, ds, ans = [], [], []
for r in rows:
    docs = r["documents"][:1] if split == "test" else r["documents"]
    for d in docs:
        if any(a.strip() and a.lower() in d.lower() for a in r["gold_answers"]):
            qs.append(r["question"])
            ds.append(d)
            ans.append(r["gold_answers"])
            break
    if len(qs) == count:
        break
records = []
t0 = time.time()
with torch.no_grad():
    for s in range(0, len(qs), 16):
        b = build_compressor_inputs(tok, cfg, qs[s : s + 16], [[d] for d in ds[s : s + 16]])
        ids = b["compressor_input_ids"]
        h = model.compressor(
            input_ids=ids, attention_mask=b["compressor_attention_mask"], use_cache=False
        ).last_hidden_state
        for i in range(len(ids)):
            t = ids[i].tolist()
            first = t.index(cfg.document_separator_token_id) + 1
            end = next(j for j, x in enumerate(t) if x in mem)
            enc = tok(ds[s + i], add_special_tokens=False, return_offsets_mapping=True)
            target = answer_tokens(ds[s + i], enc["offset_mapping"][: end - first], ans[s + i])
            if target is None or target.sum() == 0:
                continue
            records.append(
                {"h": h[i, :end].half().clone(), "first": first, "target": target, "ids": ids[i, :end].clone()}
            )
        if s % 800 == 0:
            print(s, len(records), round(time.time() - t0, 1), flush=True)
torch.save(records, out)
print("saved", len(records), round(time.time() - t0, 1))
