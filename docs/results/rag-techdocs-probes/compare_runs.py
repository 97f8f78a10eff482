"""This run's answers (from its progress file) beside the repeat-only default's run on the same questions.

`docs/results/rag-techdocs-company` (commit 60d829e) ran the same seeded 200 questions, nodes and
retrieval with the default of that commit (the repeat check alone), fixed 4x and 8x and nothing
evicted. This script reads the questions answered so far in this run's progress.jsonl, checks that
the modes both runs share (raw, nothing evicted, fixed 8x) answered alike, and compares every mode of
both runs with nothing evicted and with raw, paired (`icae_rag.eval.compare`), on those questions.
Writes comparison.json and comparison.md beside this file.

    python docs/results/rag-techdocs-probes/compare_runs.py
"""

from __future__ import annotations

import json
from pathlib import Path

from icae_rag.eval.compare import compare_modes, comparison_markdown
from icae_rag.eval.metrics import answer_contained
from icae_rag.io import atomic_path

HERE = Path(__file__).parent
BEFORE = HERE.parent / "rag-techdocs-company" / "results.json"
RENAME = {"kvzip": "kvzip (repeat + probes)"}
BEFORE_RENAME = {"kvzip": "kvzip (repeat only, 60d829e)", "kvzip:ratio=4": "kvzip:ratio=4 (60d829e)"}
SHARED = ("raw", "kvzip:keep_fraction=1.0", "kvzip:ratio=8")


def main() -> None:
    """Pair the two runs question by question and write the comparison."""
    lines = (HERE / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    runs = {e["id"]: e["runs"] for e in map(json.loads, lines[1:])}
    before = {q["id"]: q for q in json.loads(BEFORE.read_text(encoding="utf-8"))["questions"]}
    ids = [i for i in runs if i in before and before[i]["answers"]]
    same = {m: sum(runs[i][m]["prediction"] == before[i]["predictions"][m] for i in ids) for m in SHARED}
    predictions: dict[str, list[str]] = {}
    for mode in runs[ids[0]]:
        predictions[RENAME.get(mode, mode)] = [runs[i][mode]["prediction"] for i in ids]
    for mode in ("kvzip", "kvzip:ratio=4"):
        predictions[BEFORE_RENAME[mode]] = [before[i]["predictions"][mode] for i in ids]
    scores = {m: [answer_contained(p, before[i]["answers"]) for p, i in zip(ps, ids, strict=True)]
              for m, ps in predictions.items()}
    logliks = {RENAME.get(m, m): [runs[i][m]["loglik"] for i in ids] for m in runs[ids[0]] if "loglik" in runs[ids[0]][m]}
    agreements = {ref: {RENAME.get(m, m): [runs[i][m].get("agreement", {}).get(ref) for i in ids] for m in runs[ids[0]]}
                  for ref in ("raw", "kvzip:keep_fraction=1.0")}
    comparisons = compare_modes(scores, ["kvzip:keep_fraction=1.0", "raw"], logliks, agreements)
    ratios = {RENAME.get(m, m): sum(runs[i][m]["source_tokens"] for i in ids) / sum(runs[i][m]["positions"] for i in ids)
              for m in runs[ids[0]]}
    out = {"questions": len(ids), "same_answers_as_60d829e": same, "answered": {m: int(sum(s)) for m, s in scores.items()},
           "ratio_read": ratios, "comparisons": comparisons}
    md = [f"Questions compared: {len(ids)} (answered in both runs). Answers identical to the 60d829e run: "
          + ", ".join(f"{m} {n}/{len(ids)}" for m, n in same.items()), "",
          "| mode | answered | ratio read |", "|---|---:|---:|"]
    md += [f"| {m} | {n} | {f'{ratios[m]:.2f}x' if m in ratios else 'see its run'} |" for m, n in out["answered"].items()]
    with atomic_path(HERE / "comparison.json") as tmp:
        tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    with atomic_path(HERE / "comparison.md") as tmp:
        tmp.write_text("\n".join(md) + "\n\n" + comparison_markdown(comparisons), encoding="utf-8")
    print("\n".join(md) + "\n\n" + comparison_markdown(comparisons))


if __name__ == "__main__":
    main()
