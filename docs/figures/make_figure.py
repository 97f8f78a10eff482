"""Draw the README's figure from committed results files, as plain SVG (no plotting library).

    python docs/figures/make_figure.py            # rewrites docs/figures/answers-vs-ratio.svg

Every number drawn is read from these runs (see docs/results.md for their commands):

- ANSWERS: `icae-rag bench qa --dataset squad --limit 100` with kvzip at fixed ratios 2, 4, 8, 16
  (`docs/results/kvzip-squad-curve`); raw text and no context are the same run's reference lines.
  Its spec `kvzip` was fixed 4x, the default before the adaptive budget.
- DEFAULT: the same bench at n = 500 with the adaptive default (worst-block check, fidelity 0.96;
  `docs/results/kvzip-block-check/squad-500-f096`); drawn as its own point with its own raw text
  and no-context values in the label.
- TTFT: the LlamaIndex RAG bench on SQuAD, top 5 x 512-token nodes, raw text against the default
  with memories precomputed (`docs/results/rag-squad-block`).

The results files do not record the decoder's name or dtype; every one of these runs used the
default, SmolLM2-135M-Instruct in fp32 (docs/results.md states it per run), which the footer names.

tests/test_figure.py checks that this script re-generates the committed SVG byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
ANSWERS = "docs/results/kvzip-squad-curve/results.json"
DEFAULT = "docs/results/kvzip-block-check/squad-500-f096/results.json"
TTFT = "docs/results/rag-squad-block/results.json"
OUT = "docs/figures/answers-vs-ratio.svg"
# The curve run's modes and what each one was when it ran (`kvzip` was fixed 4x then).
FIXED = {"kvzip:ratio=2": "2x", "kvzip": "4x", "kvzip:ratio=8": "8x", "kvzip:ratio=16": "16x"}
DEFAULT_SPEC = "kvzip:fidelity=0.96"

WIDTH, HEIGHT = 900, 500
FONT = "font-family=\"Helvetica, Arial, sans-serif\""
BLUE, ORANGE, GREY, DARK = "#1f77b4", "#d95f02", "#777777", "#222222"


def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text(encoding="utf-8"))


def commit(run: dict) -> str:
    return run["environment"]["git_commit"][:7]


def text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", fill: str = DARK,
         weight: str = "normal") -> str:
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}" font-weight="{weight}" {FONT}>{s}</text>')


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = DARK, width: float = 1.0,
         dash: str = "") -> str:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{d}/>')


def answers_panel(curve: dict, default: dict) -> list[str]:
    """Answer-contained against compression ratio (log scale), with raw and no-context lines."""
    left, top, w, h = 70, 70, 420, 270
    ymax = 0.5

    def px(ratio: float) -> float:
        return left + w * math.log2(ratio) / 4.0  # 1x .. 16x

    def py(v: float) -> float:
        return top + h * (1 - v / ymax)

    squad = curve["qa"]["squad"]
    res, n = squad["results"], squad["record"]["n"]
    dres = default["qa"]["squad"]["results"]
    dn = default["qa"]["squad"]["record"]["n"]
    out = [text(left, 40, "Answers vs compression ratio: held-out SQuAD paragraphs", 14, weight="bold"),
           text(left, 57, "answer-contained (95% CI); kvzip memories against the raw paragraph", 11,
                fill=GREY)]
    for i in range(6):  # y grid 0.0 .. 0.5
        v = i / 10
        out.append(line(left, py(v), left + w, py(v), "#e5e5e5"))
        out.append(text(left - 8, py(v) + 4, f"{v:.1f}", 11, "end"))
    for r in (1, 2, 4, 8, 16):
        out.append(line(px(r), top + h, px(r), top + h + 5))
        out.append(text(px(r), top + h + 18, f"{r}x", 11, "middle"))
    out.append(line(left, top, left, top + h))
    out.append(line(left, top + h, left + w, top + h))
    out.append(text(left + w / 2, top + h + 36, "compression ratio (source tokens per position read)",
                    11, "middle"))
    raw, none = res["raw"]["contained"]["mean"], res["none"]["contained"]["mean"]
    out.append(line(left, py(raw), left + w, py(raw), GREY, 1.5, "6 4"))
    out.append(text(left + w - 4, py(raw) - 6, f"raw text {raw:.3f}", 11, "end", GREY))
    out.append(line(left, py(none), left + w, py(none), GREY, 1.5, "2 3"))
    out.append(text(left + w - 4, py(none) - 6, f"no context {none:.3f}", 11, "end", GREY))
    points = []
    for spec in FIXED:
        m = res[spec]
        x, c = px(m["compression_ratio"]), m["contained"]
        lo, hi = c["ci95"]
        out.append(line(x, py(lo), x, py(hi), BLUE, 1.2))
        points.append((x, py(c["mean"])))
    out.append('<polyline points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
               + f'" fill="none" stroke="{BLUE}" stroke-width="2"/>')
    for (x, y), (spec, label) in zip(points, FIXED.items(), strict=True):
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{BLUE}"/>')
        v = res[spec]["contained"]["mean"]
        out.append(text(x + 7, y + 16, f"{label} {v:.2f}", 11, fill=BLUE))
    d = dres[DEFAULT_SPEC]
    x, y = px(d["compression_ratio"]), py(d["contained"]["mean"])
    lo, hi = d["contained"]["ci95"]
    out.append(line(x, py(lo), x, py(hi), ORANGE, 1.2))
    out.append(f'<path d="M{x:.1f},{y - 7:.1f} L{x + 7:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} '
               f'L{x - 7:.1f},{y:.1f} Z" fill="{ORANGE}"/>')
    tx, ty = left + 12, py(0.27)
    out.append(line(x - 4, y + 6, tx + 150, ty - 14, ORANGE, 0.8))
    out.append(text(tx, ty, f"default {d['contained']['mean']:.3f} at "
                    f"{d['compression_ratio']:.1f}x (n = {dn})", 11, fill=ORANGE))
    out.append(text(tx, ty + 14, f"that run: raw {dres['raw']['contained']['mean']:.3f}, "
                    f"no context {dres['none']['contained']['mean']:.3f}", 11, fill=ORANGE))
    lx, ly = left, top + h + 58
    out.append(line(lx, ly, lx + 22, ly, BLUE, 2))
    out.append(text(lx + 28, ly + 4, f"kvzip at a fixed ratio, n = {n} (commit {commit(curve)}); "
                    "the 4x point was the default then", 11))
    out.append(f'<path d="M{lx + 11:.1f},{ly + 12:.1f} L{lx + 17:.1f},{ly + 18:.1f} '
               f'L{lx + 11:.1f},{ly + 24:.1f} L{lx + 5:.1f},{ly + 18:.1f} Z" fill="{ORANGE}"/>')
    out.append(text(lx + 28, ly + 22, f"kvzip default, sized by its self-check, n = {dn} "
                    f"(commit {commit(default)})", 11))
    return out


def ttft_panel(rag: dict) -> list[str]:
    """Time to first token, raw text against the default, memories precomputed at index time."""
    left, top, w = 580, 70, 280
    modes = rag["modes"]
    rows = [("raw text", modes["raw"], GREY), ("kvzip default", modes["kvzip"], ORANGE)]
    tmax = max(m["mean_ttft_seconds"] for _, m, _ in rows)
    scale = w / (math.ceil(tmax) + 1)
    out = [text(left, 40, "Time to first token: LlamaIndex RAG", 14, weight="bold"),
           text(left, 57, f"SQuAD, top {rag['options']['top_k']} x {rag['options']['node_tokens']}"
                f"-token nodes, n = {rag['record']['n']}", 11, fill=GREY)]
    for i, (label, m, colour) in enumerate(rows):
        y = top + 30 + i * 95
        t = m["mean_ttft_seconds"]
        out.append(text(left, y - 8, label, 12, weight="bold"))
        out.append(f'<rect x="{left}" y="{y:.1f}" width="{t * scale:.1f}" height="30" '
                   f'fill="{colour}"/>')
        out.append(text(left + t * scale + 6, y + 20, f"{t:.2f} s", 12))
        out.append(text(left, y + 48, f"{m['mean_context_positions']:,.0f} positions "
                        f"({m['compression_ratio']:.1f}x), answer-contained "
                        f"{m['contained']['mean']:.3f}", 11, fill=GREY))
    raw, dflt = modes["raw"]["mean_ttft_seconds"], modes["kvzip"]["mean_ttft_seconds"]
    out.append(text(left, top + 225, f"{raw / dflt:.1f}x lower, memories precomputed at", 12,
                    weight="bold"))
    out.append(text(left, top + 241, f"index time (commit {commit(rag)})", 12, weight="bold"))
    out.append(text(left, top + 262, "2 shared CPU cores: the seconds are indicative,", 11,
                    fill=GREY))
    out.append(text(left, top + 277, "the ratio is within one run", 11, fill=GREY))
    return out


def figure() -> str:
    curve, default, rag = load(ANSWERS), load(DEFAULT), load(TTFT)
    runs = (curve, default, rag)
    torches = {r["environment"]["versions"]["torch"] for r in runs}
    cores = {str(r["environment"]["hardware"]["cpu_count"]) for r in runs}
    body = [f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
            *answers_panel(curve, default), *ttft_panel(rag),
            text(20, HEIGHT - 28, "SmolLM2-135M-Instruct decoder, fp32, greedy decoding, torch "
                 + ", ".join(sorted(torches)) + ", " + "/".join(sorted(cores)) + " CPU cores. Drawn by docs/figures/make_figure.py",
                 10, fill=GREY),
            text(20, HEIGHT - 14, "from " + ", ".join(p.removesuffix("/results.json")
                                                      for p in (ANSWERS, DEFAULT, TTFT)) + ".",
                 10, fill=GREY)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}">\n' + "\n".join(body) + "\n</svg>\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / OUT), help="where to write the SVG")
    args = parser.parse_args(argv)
    Path(args.out).write_text(figure(), encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main()
