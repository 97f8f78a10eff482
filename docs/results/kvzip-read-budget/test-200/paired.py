"""Paired difference of two policies' agreement with nothing evicted, from a kvzip_company answers.jsonl.

    python docs/results/kvzip-read-budget/test-200/paired.py answers.jsonl POLICY_A POLICY_B

Per question, A's agreement minus B's (both the full memories' own answer's mean log-likelihood per
token, read from what each policy reads); the mean over the questions both answered, with a 95%
bootstrap interval (4,000 resamples, seed 0).
"""

from __future__ import annotations

import json
import random
import statistics
import sys

path, a, b = sys.argv[1:4]
rows = {(r["policy"], r["id"]): r for r in map(json.loads, open(path).read().splitlines())}
ids = [i for (p, i) in rows if p == a and rows.get((b, i), {}).get("agreement") is not None
       and rows[(a, i)].get("agreement") is not None]
diff = [rows[(a, i)]["agreement"] - rows[(b, i)]["agreement"] for i in ids]
random.seed(0)
boot = sorted(statistics.mean(random.choices(diff, k=len(diff))) for _ in range(4000))
print(f"n={len(ids)} {a} minus {b}: {statistics.mean(diff):+.4f} ({boot[100]:+.4f} to {boot[3899]:+.4f})")
