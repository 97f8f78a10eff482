"""PNG plots of bench results (matplotlib Figure objects, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure(**kwargs: Any):
    # A bare Figure renders without pyplot, so the caller's backend (a notebook's inline one) is untouched.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def fidelity_curves(fidelity: dict[str, Any] | None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Fidelity rows with BLEU-4 grouped by (compressor kind, span), each sorted by compression ratio:
    checkpoints of one kind at several ratios (2x, 4x, 8x) form one curve per span length."""
    curves: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in (fidelity or {}).get("rows", []):
        if "bleu4" in r:
            curves.setdefault((r["compressor"], r["span_tokens"]), []).append(r)
    return {key: sorted(rows, key=lambda r: r["compression_ratio"]) for key, rows in curves.items()}


def plot_quality_vs_ratio(qa: dict[str, Any] | None, fidelity: dict[str, Any] | None, path: Path) -> Path:
    """QA answer-contained accuracy and/or reconstruction BLEU-4 vs compression ratio: a panel per suite run."""
    panels = [name for name, block in (("qa", qa), ("fidelity", fidelity)) if block]
    fig = _figure(figsize=(5.5 * len(panels), 4.2))
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0], strict=True))
    if "qa" in axes:
        _plot_qa(axes["qa"], qa)
    if "fidelity" in axes:
        _plot_fidelity(axes["fidelity"], fidelity)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _plot_qa(ax, qa: dict[str, Any]) -> None:
    # One colour per mode and one marker per dataset, so a mode reads the same across datasets.
    colours = {mode: f"C{i}" for i, mode in enumerate(dict.fromkeys(
        m for block in qa.values() for m in block["results"]))}
    for d, (dataset, block) in enumerate(qa.items()):
        for mode, r in block["results"].items():
            if "contained" not in r:
                continue
            ratio = r["compression_ratio"] or 0.0
            x = max(ratio, 1.0) if mode != "none" else 1e3
            m, (lo, hi) = r["contained"]["mean"], r["contained"]["ci95"]
            ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="osD^v<>"[d % 7], color=colours[mode], capsize=3,
                        label=f"{dataset}: {mode}")
        _join_ratio_curves(ax, block["results"], colours)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (context tokens per decoder position; 'none' drawn at 1000x)")
    ax.set_ylabel("answer-contained accuracy")
    ax.set_title("QA quality vs compression")
    ax.legend(fontsize=7)


def _join_ratio_curves(ax, results: dict[str, Any], colours: dict[str, str]) -> None:
    """A line through one kind's modes at several ratios ("kvzip", "kvzip:ratio=8", ...), storage variants aside."""
    kinds: dict[str, list[tuple[float, float]]] = {}
    for mode, r in results.items():
        if ":" in mode and "ratio=" not in mode or "contained" not in r or not r.get("compression_ratio"):
            continue
        kinds.setdefault(mode.split(":")[0], []).append((r["compression_ratio"], r["contained"]["mean"]))
    for kind, points in kinds.items():
        if len(points) > 1:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, "-", color=colours.get(kind, "grey"), alpha=0.6)


def _plot_fidelity(ax, fidelity: dict[str, Any]) -> None:
    for (kind, span), rows in fidelity_curves(fidelity).items():
        m = [r["bleu4"]["mean"] for r in rows]
        low, high = zip(*(r["bleu4"]["ci95"] for r in rows), strict=True)
        err = [[v - lo for v, lo in zip(m, low, strict=True)], [hi - v for v, hi in zip(m, high, strict=True)]]
        ax.errorbar([r["compression_ratio"] for r in rows], m, yerr=err, fmt="s-", capsize=3, label=f"{kind} span {span}")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio")
    ax.set_ylabel("reconstruction BLEU-4")
    ax.set_title("Fidelity vs compression")
    ax.legend(fontsize=7)


def plot_latency_vs_length(efficiency: dict[str, Any], path: Path) -> Path:
    """Time to first token vs context length: solid = compression + prefill, dashed = prefill only
    (what a query pays when the memories were precomputed at indexing time)."""
    fig = _figure(figsize=(6, 4.2))
    ax = fig.subplots()
    modes = sorted({r["mode"] for r in efficiency["rows"]})
    for mode in modes:
        rows = sorted((r for r in efficiency["rows"] if r["mode"] == mode), key=lambda r: r["context_tokens"])
        x = [r["context_tokens"] for r in rows]
        line = ax.plot(x, [r["ttft_seconds"] for r in rows], marker="o", label=mode)[0]
        if mode != "raw":
            ax.plot(x, [r["prefill_seconds"] for r in rows], marker=".", linestyle="--", color=line.get_color(),
                    label=f"{mode}, memories precomputed")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("time to first token (s)")
    ax.set_title("Latency vs context length")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
