"""kvzip's adaptive budget: the self-check a window's candidate memory must pass and the ladder search
that chooses the window's ratio with at most two checks (see the package doc, steps 5 and 6)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ...decoding import build_prompt, target_logits
from ...decoding.prefill import _RowCache
from ...memories.kv_memory import KvMemory
from ...memories.soft_prompt import Piece
from .config import CHECK_BLOCK_TOKENS, PROBE_CUE, PROBE_SPAN, PROBES, START_RATIO

if TYPE_CHECKING:
    from .compressor import KvzipCompressor
    from .scoring import _Window


def _checked_ratio(compressor: KvzipCompressor, window: _Window, sha: str, provenance: dict,
                   prefix_row: _RowCache) -> tuple[float, float]:
    """(ratio, its overlap) for a window: the ladder step `_search` chooses, a candidate passing when its
    repeat's worst block and its probes both overlap the full memory's by the target fidelity."""
    n_layers, n_heads = window.shape
    total = len(window.ids) * n_layers * n_heads
    check = window.check
    probes = check.probes
    full_probes = _probe_probs(compressor, _check_memory(window, total, sha, provenance), probes, prefix_row)

    def overlap_at(ratio: float) -> float:
        memory = _check_memory(window, max(1, round(total / ratio)), sha, provenance)
        repeat = _overlap(check.reference, _repeat_probs(compressor, memory, window.ids, prefix_row))
        if not probes:
            return repeat
        return min(repeat, _probe_overlap(full_probes, _probe_probs(compressor, memory, probes, prefix_row)))

    return _search(overlap_at, compressor.config.ladder, compressor.config.target_fidelity)


def _check_memory(window: _Window, budget: int, sha: str, provenance: dict) -> KvMemory:
    """What the check reads at this budget, as float32: the window's lead, whole, then the `budget`
    best entries of the window, at the positions the scoring pass gave them."""
    n_layers, n_heads = window.shape
    check, w = window.check, len(window.ids)
    lead = check.lead_keys.shape[2]
    kept = window.scores.topk(budget).indices
    owners = torch.cat([torch.arange(n_layers * n_heads, device=kept.device).repeat_interleave(lead), kept // w])
    positions = check.offset + torch.cat([torch.arange(lead, device=kept.device).repeat(n_layers * n_heads),
                                          lead + kept % w])
    keys = torch.cat([check.lead_keys.reshape(-1, check.keys.shape[1]), check.keys[kept]])
    values = torch.cat([check.lead_values.reshape(-1, window.values.shape[1]), window.values[kept]])
    # The passage up to the window's end, as `_join_windows` gives a memory's piece: its tokens are
    # its context positions (KvMemory sets these anyway).
    n = check.offset + lead + w
    return KvMemory.from_unordered(keys, values, positions, owners, window.shape, "float32",
                                   pieces=(Piece(sha, 0, n, 0, n),), **provenance)


def _repeat_probs(compressor: KvzipCompressor, memory: KvMemory, ids: list[int], prefix_row: _RowCache | None = None) -> torch.Tensor:
    """The decoder's next-token distributions over `ids`, repeated from `memory` read alone."""
    prompt = build_prompt(compressor, [memory], mode="repeat")
    return torch.softmax(target_logits(compressor, [prompt], [ids], prefix_row=prefix_row)[0], dim=-1)


def _probe_probs(compressor: KvzipCompressor, memory: KvMemory, probes: list[tuple[list[int], list[int]]],
                 prefix_row: _RowCache | None = None) -> list[torch.Tensor]:
    """Per probe, the decoder's distributions over its span, cued in the repeat prompt by the tokens
    before it, reading `memory` alone (none for no probes)."""
    if not probes:
        return []
    prompt = build_prompt(compressor, [memory], mode="repeat")
    logits = target_logits(compressor, [prompt] * len(probes), [cue + span for cue, span in probes], prefix_row=prefix_row)
    return [torch.softmax(x[len(cue):], dim=-1) for x, (cue, _) in zip(logits, probes, strict=True)]


def _search(overlap_at: Callable[[float], float], ladder: tuple[float, ...], fidelity: float) -> tuple[float, float]:
    """(ratio, its overlap): the ladder step the check chose, trying at most two steps.

    The first try is the step at START_RATIO; its loss of overlap (1 - overlap, none at ratio 1)
    predicts where the loss meets 1 - `fidelity`, and the step there is tried next. Above the first
    step the loss is taken to grow with log(ratio) squared, below it with log(ratio): on the
    calibration passages (docs/kvzip.md) loss grows faster than linearly in log(ratio) past 4x, so a
    linear prediction upward mostly asks for a step that fails, while downward it finds one that
    passes. The largest ratio that passed wins; if none did, everything is kept.
    """
    if not ladder:
        return 1.0, 1.0
    first = max((r for r in ladder if r <= START_RATIO), default=ladder[-1])
    got = overlap_at(first)
    loss, allowed = 1 - got, 1 - fidelity
    if got >= fidelity:
        reach = math.log(first) * math.sqrt(allowed / loss) if loss > 0 else math.inf
        steps = [r for r in ladder if first < r and math.log(r) <= reach]
        best = (first, got)
    else:
        reach = math.log(first) * allowed / loss
        steps = [r for r in ladder if r < first and math.log(r) <= reach] or [r for r in ladder if r < first][:1]
        best = (1.0, 1.0)
    if steps:
        second = max(steps)
        got = overlap_at(second)
        if got >= fidelity:
            best = (second, got)
    return best


def _surprisal(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """-log p of each of `ids` after the ones before it (0 for the first, which has no logits here):
    `logits[i]` are the decoder's logits after ids[i], reading the text itself."""
    out = torch.zeros(len(ids))
    if len(ids) > 1:
        target = torch.tensor(ids[1:], device=logits.device)[:, None]
        out[1:] = -torch.log_softmax(logits[:len(ids) - 1].float(), dim=-1).gather(1, target)[:, 0].cpu()
    return out


def _probes(ids: list[int], surprisal: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Up to PROBES (cue, span) pairs in window order: the most surprising tokens that have a full cue
    before them and a full span from them, at least PROBE_SPAN + PROBE_CUE // 2 tokens apart, so the
    probes look up different parts of the window."""
    chosen: list[int] = []
    for t in sorted(range(PROBE_CUE, len(ids) - PROBE_SPAN + 1), key=lambda t: (-float(surprisal[t]), t)):
        if all(abs(t - u) >= PROBE_SPAN + PROBE_CUE // 2 for u in chosen):
            chosen.append(t)
            if len(chosen) == PROBES:
                break
    return [(ids[t - PROBE_CUE:t], ids[t:t + PROBE_SPAN]) for t in sorted(chosen)]


def _probe_overlap(reference: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """The mean over probes of each probe's mean sum_v min(p, q) over its span (1.0: identical)."""
    per_probe = [float(torch.minimum(a, b).sum(-1).mean()) for a, b in zip(reference, got, strict=True)]
    return sum(per_probe) / len(per_probe)


def _overlap(reference: torch.Tensor, got: torch.Tensor) -> float:
    """The lowest mean of sum_v min(p, q) over blocks of about CHECK_BLOCK_TOKENS positions (1.0: identical)."""
    per_position = torch.minimum(reference, got).sum(-1)
    blocks = torch.tensor_split(per_position, max(1, len(per_position) // CHECK_BLOCK_TOKENS))
    return float(min(block.mean() for block in blocks))

