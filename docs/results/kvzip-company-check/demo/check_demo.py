"""Demo chunks: repeat-check overlap alone vs after fixed distractor memories, per ladder ratio.

Run from the project root: python docs/results/kvzip-company-check/demo/check_demo.py (stopped after 3
chunks: repeat_company.log). Writes the demo document to build/company-demo/ for probe_demo.py.
"""
import json
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import torch

from icae_rag import load_compressor
from icae_rag.compressors.kvzip import LADDER
from icae_rag.compressors.kvzip.check import _overlap
from icae_rag.decoding import build_prompt, target_logits

TOPICS = ("if", "while", "for", "with", "context-managers")
Q = "Which statement is used to wrap the execution of a block with methods defined by a context manager?"
doc = Path("build/company-demo/doc.txt")
doc.parent.mkdir(parents=True, exist_ok=True)
doc.write_text("\n\n".join(pydoc_data.topics.topics[t].strip() for t in TOPICS), encoding="utf-8")
text = doc.read_text()
j = json.loads(subprocess.run([sys.executable, "-m", "icae_rag.cli", "ask", "--context", str(doc), "--json", Q],
                              capture_output=True, text=True, check=True).stdout)
spans = [(c["start"], c["end"]) for c in j["chunks"]]
print("default ratios", [c.get("ratio") for c in j["chunks"]], "answer:", j["answer"][:80], flush=True)
texts = [text[a:b] for a, b in spans]
full = load_compressor("kvzip:keep_fraction=1.0")
mems = full.compress_many(texts)
D = Path("docs/results/kvzip-company-check")
company = [full.compress(p.read_text()[:1500]) for p in (D / "distractor-ls.txt", D / "distractor-cp.txt")]
def probs(ctx, ids):
    p = build_prompt(full, ctx, mode="repeat")
    return torch.softmax(target_logits(full, [p], [ids])[0], -1)
rows = []
with torch.no_grad():
    for i, (t, m) in enumerate(zip(texts, mems, strict=True)):
        ids = full.tokenize(t)
        ra, rc = probs([m], ids), probs([*company, m], ids)
        row = {"chunk": i, "tokens": len(ids), "alone": {}, "company": {}}
        for r in [x for x in LADDER if x <= 8][::-1]:
            c = m.pruned(max(1, round(m.kept_entries / r)))
            row["alone"][r] = round(_overlap(ra, probs([c], ids)), 4)
            row["company"][r] = round(_overlap(rc, probs([*company, c], ids)), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
Path("build/company-demo/rows.json").write_text(json.dumps(rows))
