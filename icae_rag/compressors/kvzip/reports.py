"""What kvzip memories record of their budget, and the summaries the CLI and benchmarks print of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...errors import InvalidInputError
from ...memories.base import Memory
from .config import CHECK, KvzipConfig

if TYPE_CHECKING:
    from .scoring import _Kept


def _budget_metadata(parts: list[_Kept], config: KvzipConfig) -> dict[str, str]:
    """What a memory records of its budget: the ratio kept and, when adaptive, the check it passed."""
    layers_heads = parts[0].counts.numel()
    entries = sum(int(p.counts.sum()) for p in parts)
    out = {"kvzip_ratio": f"{sum(p.source_tokens for p in parts) * layers_heads / max(1, entries):.3f}"}
    if config.adaptive:
        out |= {"kvzip_fidelity": f"{min(p.overlap for p in parts):.4f}",
                "kvzip_fidelity_target": f"{config.target_fidelity:g}", "kvzip_check": CHECK}
    return out


def memory_budget(memory: Memory) -> dict[str, float | None]:
    """What a memory records of its budget: the ratio it keeps and, for adaptive kvzip memories, the
    overlap its check measured and the fidelity it had to reach (None where not recorded)."""
    meta = getattr(memory, "metadata", None) or {}

    def number(key: str) -> float | None:
        return float(meta[key]) if key in meta else None

    ratio = number("kvzip_ratio")
    return {"ratio": ratio if ratio is not None else round(memory.compression_ratio, 3),
            "fidelity": number("kvzip_fidelity"), "fidelity_target": number("kvzip_fidelity_target")}


def budget_summary(memories: Sequence[Memory]) -> dict[str, Any]:
    """The distribution of chosen ratios and measured fidelities over a corpus's memories."""
    if not memories:
        raise InvalidInputError("budget_summary needs at least one memory")
    budgets = [memory_budget(m) for m in memories]
    ratios = torch.tensor([b["ratio"] for b in budgets], dtype=torch.float64)
    source = sum(m.source_tokens for m in memories)
    out: dict[str, Any] = {
        "memories": len(memories), "source_tokens": source,
        # A corpus's ratio is its tokens per kept token-equivalent, not the mean of per-memory ratios.
        "ratio": round(source / sum(m.source_tokens / b["ratio"] for m, b in zip(memories, budgets, strict=True)), 3),
        "ratio_quantiles": {q: round(float(ratios.quantile(v)), 3) for q, v in
                            (("min", 0.0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1.0))},
        "ratio_counts": {f"{r:g}": n for r, n in sorted(Counter(round(b["ratio"], 1) for b in budgets).items())},
    }
    fidelities = [b["fidelity"] for b in budgets if b["fidelity"] is not None]
    if fidelities:
        out["fidelity"] = {"min": round(min(fidelities), 4), "mean": round(sum(fidelities) / len(fidelities), 4),
                           "checked": len(fidelities)}
    return out
