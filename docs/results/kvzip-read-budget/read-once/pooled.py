"""The default read once against nothing evicted, pooled over two seeded samples of the techdocs test
split (a question in both counted once): retention, flips and agreement with paired 95% bootstrap
intervals (`icae_rag.eval.compare.compare`).

    python docs/results/kvzip-read-budget/read-once/pooled.py test/answers.jsonl test-seed1/answers.jsonl
"""

from __future__ import annotations

import json
import sys

from icae_rag.eval.compare import compare

rows: dict[tuple[str, str], dict] = {}
for path in sys.argv[1:]:
    for line in open(path, encoding="utf-8").read().splitlines():
        r = json.loads(line)
        rows.setdefault((r["policy"], r["id"]), r)  # the first file's row where a question is in both
ids = sorted(i for (p, i) in rows if p == "full" and ("read=2.5", i) in rows)
full = [rows[("full", i)] for i in ids]
read = [rows[("read=2.5", i)] for i in ids]
out = compare([r["contained"] for r in read], [r["contained"] for r in full],
              agreement=[r.get("agreement") for r in read], reference_agreement=[r.get("agreement") for r in full])
raw = sum(rows[("raw", i)]["contained"] for i in ids)
print(json.dumps({"questions": len(ids), "raw_answered": raw, "full_answered": sum(r["contained"] for r in full),
                  "read_answered": sum(r["contained"] for r in read)} | out, indent=1))
