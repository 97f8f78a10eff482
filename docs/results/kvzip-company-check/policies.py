"""Budgets each check would choose (from checks.py's table) at several targets: per-node ratio files.

    python docs/results/kvzip-company-check/policies.py CHECKS.jsonl OUTDIR

For each check (repeat; probe:<company> aggregated by the mean or the minimum over probes) and
target, each node gets the largest ladder ratio reached by passing every smaller ratio (as a search
that stops at the first failure would), else 1 (everything kept). Prints the mean ratio read (source
tokens over kept) per check and target; writes OUTDIR/<check>-<target>.json for
`benchmarks.kvzip_company --policy ratios=FILE`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LADDER = [1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0]


def values(rec: dict, check: str) -> dict[float, float]:
    """The check's value at every ratio for one node."""
    if check == "repeat":
        return {float(k): v for k, v in rec["repeat"].items()}
    kind, company, agg = check.split(":")
    table = rec["probe"][company]
    fn = min if agg == "min" else (lambda xs: sum(xs) / len(xs))
    return {float(k): fn(v) for k, v in table.items()}


def chosen(vals: dict[float, float], target: float) -> float:
    best = 1.0
    for r in LADDER:
        if vals[r] < target:
            break
        best = r
    return best


def main() -> None:
    recs = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines()]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    companies = list(recs[0]["probe"])
    checks = ["repeat"] + [f"probe:{c}:{a}" for c in companies for a in ("mean", "min")]
    targets = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98]
    print("check", *targets, sep="\t")
    for check in checks:
        row = []
        for t in targets:
            ratios = {r["node"]: chosen(values(r, check), t) for r in recs}
            tokens = {r["node"]: r["tokens"] for r in recs}
            read = sum(tokens.values()) / sum(tokens[n] / x for n, x in ratios.items())
            row.append(f"{read:.2f}")
            (out / f"{check.replace(':', '_')}-{t:g}.json").write_text(json.dumps({str(k): v for k, v in ratios.items()}))
        print(check, *row, sep="\t")


if __name__ == "__main__":
    main()
