"""Paired answer-contained ratios between the modes of a RAG bench results.json (questions resampled together).

    python paired.py results.json kvzip kvzip:keep_fraction=1.0 raw
prints each mode's contained and every (mode / reference) paired ratio with its 95% bootstrap interval.
"""

import json
import sys

from icae_rag.eval.metrics import answer_contained, paired_ratio_ci

path, modes = sys.argv[1], sys.argv[2:]
questions = json.load(open(path))["questions"]
scores = {m: [float(answer_contained(q["predictions"][m], q["answers"])) for q in questions] for m in modes}
print(f"n = {len(questions)}")
for m in modes:
    print(f"{m}: contained {sum(scores[m]) / len(questions):.3f}")
for i, a in enumerate(modes):
    for b in modes[i + 1:]:
        r, lo, hi = paired_ratio_ci(scores[a], scores[b])
        print(f"{a} / {b}: {r:.2f}x (95% CI {lo:.2f}-{hi:.2f})")
