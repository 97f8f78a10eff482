"""Run from the project root. Planted facts: find a passage whose repeat-only memory answers alone but not among distractor memories."""
import json
import sys

import icae_rag.compressors.kvzip.scoring as ks
from icae_rag import load_compressor

sys.path.insert(0, "docs/results/kvzip-company-check/planted")
from paragraphs import P  # noqa: E402

raw = load_compressor("raw")
new = load_compressor("kvzip")
texts = [p[1] for p in P]
keep = []
for i, (_tool, text, q, gold) in enumerate(P):
    a = raw.answer(q, [text], max_new_tokens=24).text
    print("raw", i, gold.lower() in a.lower(), repr(a[:70]), flush=True)
    if gold.lower() in a.lower():
        keep.append(i)
saved = ks._probes
ks._probes = lambda ids, s: []
old_m = new.compress_many(texts)
ks._probes = saved
new_m = new.compress_many(texts)
print("old", [m.metadata["kvzip_ratio"] for m in old_m], "new", [m.metadata["kvzip_ratio"] for m in new_m], flush=True)
for i in keep:
    tool, text, q, gold = P[i]
    others = [j for j in range(len(P)) if j != i]
    row = {"i": i, "tool": tool}
    for name, mm in (("old", old_m), ("new", new_m)):
        alone = new.answer(q, [mm[i]], max_new_tokens=24).text
        comp = new.answer(q, [mm[j] for j in others] + [mm[i]], max_new_tokens=24).text
        row[name] = [gold.lower() in alone.lower(), gold.lower() in comp.lower(), comp[:60]]
    print(json.dumps(row), flush=True)
