"""kvzip's scoring passes: every entry of a window with its score (the largest attention a repeat
query gives it), and in adaptive mode what the window's check reads; the top-scored entries kept.

`_score_window` scores one window of a passage after its lead; `_score_rows` scores several short
passages encoded apart in one pair of forwards over right-padded rows. Both give the same `_Window`
for the same passage.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...models import kv_attention
from ...models.backbones import DecoderBackbone
from ...models.hf_compat import cache_arg, output_cache
from ...models.kv_attention import KvView, rerotate
from .check import _probes, _surprisal

Prefix = list[tuple[torch.Tensor, torch.Tensor]]  # the prompt prefix's per-layer (keys, values)


class _Check(NamedTuple):
    """What an adaptive window's check reads: the window's keys and its lead's keys and values as the
    scoring pass computed them (rotated for `prefix + offset + i`, i counted from the lead's first
    token), the full memory's repeat distributions (the reference) and the window's look-up probes
    (cue, span)."""

    keys: torch.Tensor
    lead_keys: torch.Tensor
    lead_values: torch.Tensor
    offset: int
    reference: torch.Tensor
    probes: list[tuple[list[int], list[int]]]


class _Window(NamedTuple):
    """One scored window: every entry flat by (layer, head, position), its score, the window's tokens,
    (layers, kv_heads), and in adaptive mode what its check reads."""

    keys: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    start: int
    ids: list[int]
    shape: tuple[int, int]
    check: _Check | None


class _Kept(NamedTuple):
    """A window's kept entries (by layer, head, position), per-head counts, and the check's overlap."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    counts: torch.Tensor
    scores: torch.Tensor
    source_tokens: int
    overlap: float | None


def _score_rows(decoder: DecoderBackbone, prefix: Prefix, windows: list[list[int]], repeat_ids: list[int],
                adaptive: bool) -> list[_Window]:
    """One `_Window` per passage, the passages scored together: one prefill and one repeat forward
    over right-padded rows. Row i's tokens have the positions they have when scored alone, and
    padding is masked as a key (and, in `kv_attention`, as a scoring query)."""
    from transformers import DynamicCache

    model, device = decoder.model, decoder.device
    prefix_len, rows, longest = prefix[0][0].shape[2], len(windows), max(map(len, windows))
    pad = decoder.tokenizer.pad_token_id or 0  # any id: padded tokens are masked
    lengths = torch.tensor([len(w) for w in windows], device=device)[:, None]
    cache = DynamicCache(config=model.config)
    for layer, (k, v) in enumerate(prefix):
        cache.update(k.repeat(rows, 1, 1, 1), v.repeat(rows, 1, 1, 1), layer)
    real = torch.arange(longest, device=device)[None] < lengths
    mask = torch.cat([real.new_ones(rows, prefix_len), real], dim=1)
    ids = torch.tensor([w + [pad] * (longest - len(w)) for w in windows], device=device)
    positions = torch.arange(prefix_len, prefix_len + longest, device=device)[None].expand(rows, -1)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, **cache_arg(cache),
                use_cache=True, logits_to_keep=longest if adaptive else 1)
    layers = output_cache(out).layers
    # Each row's repeat follows its own passage: positions run on from the passage's last token.
    repeat = torch.tensor([repeat_ids + w + [pad] * (longest - len(w)) for w in windows], device=device)
    span = len(repeat_ids) + longest
    mask = torch.cat([mask, torch.arange(span, device=device)[None] < len(repeat_ids) + lengths], dim=1)
    positions = prefix_len + lengths + torch.arange(span, device=device)[None]
    view = KvView(record=True, score_columns=(prefix_len, prefix_len + longest))
    scored = model(input_ids=repeat, attention_mask=mask.long(), position_ids=positions,
                   **cache_arg(output_cache(out)), use_cache=True,
                   logits_to_keep=longest + 1 if adaptive else 1, kv_view=view)
    scores = torch.stack([view.scores[i] for i in range(len(layers))])  # (L, rows, H, longest)
    result = []
    for row, window in enumerate(windows):
        w = len(window)
        keys = torch.stack([layer.keys[row, :, prefix_len:prefix_len + w] for layer in layers])  # (L, H, w, d)
        values = torch.stack([layer.values[row, :, prefix_len:prefix_len + w] for layer in layers])
        check = None
        if adaptive:  # a passage encoded apart: its check reads no lead
            empty = keys[:, :, :0]
            check = _check(window, keys, empty, empty, 0, scored.logits[row, :w], out.logits[row, :w - 1])
        result.append(_window(window, 0, keys, values, scores[:, row, :, :w], check))
    return result


def _score_window(decoder: DecoderBackbone, prefix: Prefix, lead: list[int], window: list[int], start: int,
                  shift: int, cache, repeat_ids: list[int], adaptive: bool,
                  lead_tokens: int) -> tuple[_Window, Prefix]:
    """Every entry of `window` (the passage's tokens from `start`) with its score, and the entries to
    carry into the next window. `cache` holds the prefix and, after the first window, the last
    `lead_tokens` entries of the passage before `start` as the passage computed them; the first
    window follows `lead` (the caller's text before the passage, `shift` tokens, which moves every
    passage token `shift` positions on). Adaptive mode also keeps the full memory's next-token
    distributions over the repeated window (the check's reference)."""
    model, device = decoder.model, decoder.device
    # The prefix's length from its cached entries: rendering and tokenising the prompt again per window is wasted.
    prefix_len, cached = prefix[0][0].shape[2], cache.get_seq_length()
    seq = lead + window
    first = prefix_len + shift + start - len(lead)
    positions = torch.arange(first, first + len(seq), device=device)[None]
    # Adaptive: the window's own logits too, whose surprising tokens the check probes.
    out = model(input_ids=torch.tensor([seq], dtype=torch.long, device=device), position_ids=positions,
                **cache_arg(cache), use_cache=True, logits_to_keep=len(window) if adaptive else 1)
    col, end = cached + len(lead), cached + len(seq)
    layers = output_cache(out).layers
    # Cloned: the repeat below extends these layers, and the carried entries must not keep it alive.
    carry = [(layer.keys[:, :, max(prefix_len, end - lead_tokens):end].clone(),
              layer.values[:, :, max(prefix_len, end - lead_tokens):end].clone()) for layer in layers]
    raw_keys = torch.stack([layer.keys[0, :, col:end] for layer in layers])  # (L, H, w, d)
    # Stored keys are rotated as if the passage started right after the prefix.
    keys = rerotate(raw_keys, -shift, kv_attention.rotary(model))
    values = torch.stack([layer.values[0, :, col:end] for layer in layers])
    repeat = repeat_ids + window
    view = KvView(record=True, score_columns=(col, end))
    positions = torch.arange(first + len(seq), first + len(seq) + len(repeat), device=device)[None]
    scored = model(input_ids=torch.tensor([repeat], dtype=torch.long, device=device), position_ids=positions,
                   **cache_arg(output_cache(out)), use_cache=True,
                   logits_to_keep=len(window) + 1 if adaptive else 1, kv_view=view)
    scores = torch.stack([view.scores[i][0] for i in range(len(layers))])
    check = None
    if adaptive:
        # The check reads a candidate memory after the text the scoring pass read before the
        # window (its lead, kept whole; nothing for a passage encoded apart), every entry where
        # the scoring pass had it: then the scoring pass's distributions over the repeated window
        # are the check's reference.
        lead_keys = torch.stack([layer.keys[0, :, prefix_len:col] for layer in layers])
        lead_values = torch.stack([layer.values[0, :, prefix_len:col] for layer in layers])
        # The lead's first entry sits `first - cached` positions after the prefix (the passage
        # before it, not carried, leaves that gap).
        check = _check(window, raw_keys, lead_keys, lead_values, first - cached, scored.logits[0, :-1],
                       out.logits[0, :len(window) - 1])
    return _window(window, start, keys, values, scores, check), carry


def _check(ids: list[int], keys: torch.Tensor, lead_keys: torch.Tensor, lead_values: torch.Tensor, offset: int,
           repeat_logits: torch.Tensor, text_logits: torch.Tensor) -> _Check:
    """What a window's check reads, from a scoring pass: `keys` (layers, kv_heads, window, dim) as the
    pass computed them, `repeat_logits` its logits over the repeated window (the reference) and
    `text_logits` its logits after each of the window's tokens but the last, read as text (the probes)."""
    return _Check(keys.reshape(-1, keys.shape[-1]), lead_keys, lead_values, offset,
                  torch.softmax(repeat_logits.float(), dim=-1), _probes(ids, _surprisal(text_logits, ids)))


def _window(ids: list[int], start: int, keys: torch.Tensor, values: torch.Tensor, scores: torch.Tensor,
            check: _Check | None) -> _Window:
    """A scored window from its (layers, kv_heads, window, dim) keys and values, stored as the memory
    keeps them, and their (layers, kv_heads, window) scores."""
    n_layers, n_heads, _, dim = keys.shape
    return _Window(keys.reshape(-1, dim), values.reshape(-1, dim), scores.reshape(-1), start, ids,
                   (n_layers, n_heads), check)


def _apart_groups(which: list[int], encoded: dict[int, list[int]], window_tokens: int) -> list[list[int]]:
    """Passages (`which`, keys of `encoded`) to score several per forward: shortest first, each group as
    many as fit in one window (rows x longest <= window_tokens, so peak memory stays bounded by the
    window). A passage left alone in its group is left out (`_score_window` scores it)."""
    groups: list[list[int]] = [[]]
    for i in sorted(which, key=lambda i: len(encoded[i])):
        if (len(groups[-1]) + 1) * len(encoded[i]) > window_tokens:
            groups.append([])
        groups[-1].append(i)
    return [g for g in groups if len(g) > 1]


def _keep_top(window: _Window, budget: int, overlap: float | None) -> _Kept:
    """The `budget` highest-scored entries of a window, over all layers and heads together."""
    w = len(window.ids)
    kept = window.scores.topk(budget).indices.sort().values  # flat (layer, head, position) order
    counts = torch.bincount(kept // w, minlength=window.shape[0] * window.shape[1]).view(window.shape)
    return _Kept(window.keys[kept], window.values[kept], window.start + kept % w, counts, window.scores[kept], w, overlap)

