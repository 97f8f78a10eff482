import json
import sys

import numpy as np
from scipy.stats import spearmanr

files = sys.argv[1:]
rows = [r for f in files for r in json.load(open(f))]
LV = [
    "0.5",
    "0.3333333333333333",
    "0.25",
    "0.16666666666666666",
    "0.125",
    "0.08333333333333333",
    "0.0625",
]


def m(x):
    return sum(x) / len(x)


def checks(r, lv):
    c, c1, rp, rp1 = r["cloze"][lv], r["cloze"]["1.0"], r["repeat"][lv], r["repeat"]["1.0"]
    [a for a, b in zip(c["agree"], c1["ll"], strict=False)]
    return {
        "cloze_agree": m(c["agree"]),
        "cloze_ll": m(c["ll"]) - m(c1["ll"]),
        "cloze_kl": -m(c["kl"]),
        "cloze_ll_min": min(a - b for a, b in zip(c["ll"], c1["ll"], strict=False)),
        "repeat_agree": rp["agree"],
        "repeat_ll": rp["ll"] - rp1["ll"],
        "repeat_kl": -rp["kl"],
        "mean_agree": (m(c["agree"]) + rp["agree"]) / 2,
        "min_agree": min(m(c["agree"]), rp["agree"]),
        "sum_kl": -rp["kl"] - m(c["kl"]),
    }


def gold(r, lv):
    return m(r["gold"][lv]) - m(r["gold"]["1.0"])


pairs = [(gold(r, lv), checks(r, lv)) for r in rows for lv in LV]
print("n paras", len(rows))
for name in pairs[0][1]:
    rho = spearmanr([p[0] for p in pairs], [p[1][name] for p in pairs]).statistic
    print(f"{name:14s} spearman with gold drop {rho:.3f}")
# fixed curve
print("fixed:", {f"{1 / float(lv):.0f}x": round(m([gold(r, lv) for r in rows]), 3) for lv in LV})


def policy(name, tau):
    kept_tot = src = 0
    drops = []
    for r in rows:
        choose = "1.0"
        for lv in LV:  # increasing ratio
            if checks(r, lv)[name] >= tau:
                choose = lv
            else:
                break
        k = float(choose)
        kept_tot += k * r["text_tokens"]
        src += r["text_tokens"]
        drops.append(0.0 if choose == "1.0" else gold(r, choose))
    return src / kept_tot, m(drops)



for name in pairs[0][1]:
    vals = sorted({round(p[1][name], 3) for p in pairs})
    qs = np.quantile(vals, [0.1, 0.3, 0.5, 0.7, 0.85, 0.95])
    print(name, [(round(t, 3), *map(lambda v: round(v, 3), policy(name, t))) for t in qs])
print("per-file policy")
allrows = rows
for f in files:
    rows = json.load(open(f))
    for name, taus in [
        ("repeat_agree", [0.95, 0.96, 0.97, 0.98]),
        ("repeat_kl", [-0.05, -0.03, -0.02]),
        ("cloze_agree", [0.85, 0.9]),
    ]:
        print(
            f.split("/")[-1],
            name,
            [(t, *map(lambda v: round(v, 3), policy(name, t))) for t in taus],
        )
    print(
        f.split("/")[-1],
        "fixed:",
        {f"{1 / float(lv):.0f}x": round(m([gold(r, lv) for r in rows]), 3) for lv in LV},
    )
