"""Modes of one bench run compared question by question: paired answer-contained ratios, differences, flips.

    python -m benchmarks.paired docs/results/rag-techdocs-int4/results.json kvzip kvzip:storage=int4 raw
    python -m benchmarks.paired bench-out/results.json kvzip raw --dataset squad

Reads the `questions` (every question's answer in every mode) of a `benchmarks.llamaindex_rag`
results.json, or of one data set of an `icae-rag bench qa` results.json (`--dataset`), and prints each
mode's answer-contained, then for every pair (a, b): the paired ratio a / b and difference a - b, each
with its 95% bootstrap interval (the same questions resampled together), and the flips, the questions
only a answers and only b answers. Two modes that differ by a few flips each way differ by noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icae_rag.eval.metrics import answer_contained, bootstrap_ci, paired_ratio_ci


def main(argv: list[str] | None = None) -> None:
    """Print contained per mode, then the paired ratio and flips of every pair of modes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of benchmarks.llamaindex_rag or icae-rag bench qa")
    parser.add_argument("modes", nargs="+", help="mode names as in the results (e.g. kvzip raw)")
    parser.add_argument("--dataset", help="for an `icae-rag bench qa` results.json: the data set (e.g. squad)")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    if args.dataset is not None:
        data = data.get("qa", {}).get(args.dataset, {})
    if "questions" not in data:
        parser.error(f"{args.results} has no per-question answers{f' for {args.dataset}' if args.dataset else ''}: "
                     "it needs the `questions` a RAG bench or (with --dataset) a `bench qa` run writes")
    questions = [q for q in data["questions"] if q["answers"]]  # unanswerable items have no contained score
    if not questions:
        parser.error(f"{args.results} has no answerable question to compare modes on")
    missing = sorted({m for m in args.modes for q in questions if m not in q["predictions"]})
    if missing:
        parser.error(f"modes {missing} are not in {args.results}; it has {sorted(questions[0]['predictions'])}")
    scores = {m: [answer_contained(q["predictions"][m], q["answers"]) for q in questions] for m in args.modes}
    print(f"n = {len(questions)}")
    for m in args.modes:
        print(f"{m}: contained {sum(scores[m]) / len(questions):.3f}")
    for i, a in enumerate(args.modes):
        for b in args.modes[i + 1:]:
            ratio = f"no ratio ({b} answers none)"
            if sum(scores[b]):
                r, lo, hi = paired_ratio_ci(scores[a], scores[b])
                ratio = f"{r:.2f}x (95% CI {lo:.2f}-{hi:.2f})"
            pairs = list(zip(scores[a], scores[b], strict=True))
            d, d_lo, d_hi = bootstrap_ci([x - y for x, y in pairs])
            only_a, only_b = sum(x > y for x, y in pairs), sum(y > x for x, y in pairs)
            print(f"{a} / {b}: {ratio}, {a} - {b}: {d:+.3f} ({d_lo:+.3f} to {d_hi:+.3f}); "
                  f"only {a}: {only_a}, only {b}: {only_b}")


if __name__ == "__main__":
    main()
