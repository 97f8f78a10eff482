"""One mode of run A against one mode of run B, question by question, when both runs asked the same
questions and their raw answers match (greedy decoding: the runs differ only in the compared modes).

    python cross_run.py A/results.json MODE_A B/results.json MODE_B [DATASET]
"""

import json
import sys

from icae_rag.eval.metrics import answer_contained, bootstrap_ci, paired_ratio_ci


def load(path: str, dataset: str | None) -> dict[str, dict]:
    """The answerable questions of a results.json, by id (by question text where there is no id)."""
    data = json.load(open(path))
    data = data["qa"][dataset] if dataset else data
    return {q.get("id", q["question"]): q for q in data["questions"] if q["answers"]}


def main(a_path: str, a_mode: str, b_path: str, b_mode: str, dataset: str | None = None) -> None:
    """Print both modes' contained, each against raw and against each other (paired)."""
    a, b = load(a_path, dataset), load(b_path, dataset)
    keys = [k for k in a if k in b]
    same_raw = sum(a[k]["predictions"]["raw"] == b[k]["predictions"]["raw"] for k in keys)
    print(f"n = {len(keys)}; raw answers identical on {same_raw}")
    sa = [answer_contained(a[k]["predictions"][a_mode], a[k]["answers"]) for k in keys]
    sb = [answer_contained(b[k]["predictions"][b_mode], b[k]["answers"]) for k in keys]
    raw = [answer_contained(a[k]["predictions"]["raw"], a[k]["answers"]) for k in keys]
    print(f"A {sum(sa) / len(keys):.3f}, B {sum(sb) / len(keys):.3f}, raw {sum(raw) / len(keys):.3f}")
    for name, other in (("raw", raw), ("B", sb)):
        r, lo, hi = paired_ratio_ci(sa, other)
        print(f"A / {name}: {r:.2f}x (95% CI {lo:.2f}-{hi:.2f})")
    pairs = list(zip(sa, sb, strict=True))
    d, lo, hi = bootstrap_ci([x - y for x, y in pairs])
    print(f"A - B: {d:+.3f} ({lo:+.3f} to {hi:+.3f}); only A {sum(x > y for x, y in pairs)}, "
          f"only B {sum(y > x for x, y in pairs)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
