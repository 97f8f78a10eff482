"""Demo chunks: cloze-probe overlap (candidate vs full) alone, after the chunk's own tokens shuffled, after fixed distractors.

Run from the project root after check_demo.py: python docs/results/kvzip-company-check/demo/probe_demo.py
(probe_company.jsonl: per chunk and ratio, [mean, min] over its 8 probes). The chunks are those
`icae-rag ask` read before the probes were part of the check (ask_repeat_only.json).
"""
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, "docs/results/kvzip-company-check")

from checks import probe_probs, probes, surprisal

from icae_rag import load_compressor
from icae_rag.compressors.kvzip import LADDER

j = json.loads(Path("build/company-demo/ask.json").read_text()) if Path("build/company-demo/ask.json").exists() else None
text = Path("build/company-demo/doc.txt").read_text()
if j is None:
    Q = "Which statement is used to wrap the execution of a block with methods defined by a context manager?"
    j = json.loads(subprocess.run([sys.executable, "-m", "icae_rag.cli", "ask", "--context", "build/company-demo/doc.txt", "--json", Q],
                                  capture_output=True, text=True, check=True).stdout)
    Path("build/company-demo/ask.json").write_text(json.dumps(j))
texts = [text[c["start"]:c["end"]] for c in j["chunks"]]
full = load_compressor("kvzip:keep_fraction=1.0")
tok = full.decoder.tokenizer
mems = full.compress_many(texts)
D = Path("docs/results/kvzip-company-check")
fixed = [full.compress(p.read_text()[:1500]) for p in (D / "distractor-ls.txt", D / "distractor-cp.txt")]
with torch.no_grad():
    for i, (t, m) in enumerate(zip(texts, mems, strict=True)):
        ids = full.tokenize(t)
        rows = probes(ids, surprisal(full, ids))
        sh = ids[:]
        random.Random(i).shuffle(sh)
        comps = {"alone": [], "shuffled": [full.compress(tok.decode(sh))], "fixed": fixed}
        refs = {k: probe_probs(full, [*c, m], rows) for k, c in comps.items()}
        row = {"chunk": i, "probes": [tok.decode(c[-4:]) + "||" + tok.decode(s) for c, s in rows]}
        for k, c in comps.items():
            row[k] = {}
            for r in [x for x in LADDER if x <= 8][::-1]:
                cand = m.pruned(max(1, round(m.kept_entries / r)))
                got = probe_probs(full, [*c, cand], rows)
                per = [float(torch.minimum(a, b).sum(-1).mean()) for a, b in zip(refs[k], got, strict=True)]
                row[k][r] = (round(sum(per) / len(per), 3), round(min(per), 3))
        print(json.dumps(row), flush=True)
