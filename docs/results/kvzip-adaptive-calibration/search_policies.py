"""Replays kvzip's two-check budget search on the calibration passages' measured overlaps.

Each passage was checked at ratios 1, 2, 3, 4, 6, 8, 12, 16 (calib_*.json, "repeat" / "agree" is the
overlap); ladder steps between those (5, 2.5, 1.5) are interpolated linearly in log(ratio). For each
way of predicting the second step from the first (4x), it prints the corpus ratio (tokens per kept
token), the mean number of checks, and the best any search could do (the largest passing step).

    python docs/results/kvzip-adaptive-calibration/search_policies.py > search_policies.txt
"""

import json
import math
from pathlib import Path

LADDER = (16, 12, 8, 6, 5, 4, 3, 2.5, 2, 1.5)
HERE = Path(__file__).parent


def overlap(points: dict[float, float], r: float) -> float:
    if r in points:
        return points[r]
    lo, hi = max(k for k in points if k < r), min(k for k in points if k > r)
    t = (math.log(r) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return points[lo] + (points[hi] - points[lo]) * t


def search(points: dict[float, float], fidelity: float, up_power: int) -> tuple[float, int]:
    first, allowed = 4, 1 - fidelity
    got = overlap(points, first)
    loss = 1 - got
    if got >= fidelity:
        reach = math.log(first) * (allowed / loss) ** (1 / up_power) if loss > 0 else math.inf
        steps, best = [r for r in LADDER if r > first and math.log(r) <= reach], first
    else:
        reach = math.log(first) * allowed / loss
        steps = [r for r in LADDER if r < first and math.log(r) <= reach] or [r for r in LADDER if r < first][:1]
        best = 1
    if steps:
        if overlap(points, max(steps)) >= fidelity:
            best = max(steps)
        return best, 2
    return best, 1


def main() -> None:
    sets = {name: [{1 / float(k): v["agree"] for k, v in x["repeat"].items()}
                   for x in json.loads((HERE / f"calib_{name}.json").read_text())] for name in ("squadtrain", "techdev")}
    print("| fidelity | prediction above 4x | set | ratio | checks | largest passing step |\n|---|---|---|---|---|---|")
    for fidelity in (0.95, 0.97, 0.98):
        for up_power, label in ((1, "loss ~ log(ratio)"), (2, "loss ~ log(ratio)^2")):
            for name, passages in sets.items():
                chosen = [search(p, fidelity, up_power) for p in passages]
                best = [max([r for r in LADDER if overlap(p, r) >= fidelity], default=1) for p in passages]
                n = len(passages)
                print(f"| {fidelity} | {label} | {name} ({n}) | {n / sum(1 / r for r, _ in chosen):.2f} | "
                      f"{sum(c for _, c in chosen) / n:.2f} | {n / sum(1 / r for r in best):.2f} |")


if __name__ == "__main__":
    main()
