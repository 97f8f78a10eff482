"""Prefill: a prompt's pieces extend the decoder's cache in order; text and input-level soft prompts
are prefilled, KV memories (kvzip) are appended directly with their keys re-rotated to where they
stand, and a batch of prompts goes through the decoder together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from ..memories.kv_memory import CacheColumns, KvMemory
from ..models import kv_attention
from ..models.hf_compat import cache_arg, output_cache
from ..models.kv_attention import KvView
from .prompts import Prompt
from .reader import MemoryReader


class Prefilled(NamedTuple):
    """The decoder's state after the prompts: last logits (B, V) (with `tails`: per prompt its last
    positions' logits (tail, V)), cache, 2-D mask or None, next positions (B, 1), KvView or None."""

    logits: torch.Tensor | list[torch.Tensor]
    cache: Any
    mask: torch.Tensor | None
    positions: torch.Tensor
    view: KvView | None


def _prefill(compressor: MemoryReader, prompts: Sequence[Prompt], tails: Sequence[int] | None = None,
             prefix_row: _RowCache | None = None, record: bool = False) -> Prefilled:
    """Run the prompts through the decoder. Prompts of embeddings only go in one left-padded batch.
    Prompts with KV memories take one or two forwards: the shared prefix (unless the compressor keeps
    it run, `prefix_row`), then every prompt's text after it
    (separators, mode marker, question) at once, each token at its own position, reading the memories
    laid in the cache before it (a KvView masks by position, so the text can follow all memories in
    the cache). With `tails`, the logits of prompt i's last `tails[i]` positions are kept. With
    `record` (prompts with KV memories), the returned view's `scores[l]` (B, kv_heads, columns) hold
    the largest attention each column of layer l got from the text."""
    dec = compressor.decoder
    explicit, tails = tails, [1] * len(prompts) if tails is None else list(tails)
    if not any(p.has_memories for p in prompts):
        rows = [p.embeddings for p in prompts]
        b, t = len(rows), max(r.shape[0] for r in rows)
        x = rows[0].new_zeros(b, t, rows[0].shape[-1])
        mask = torch.zeros(b, t, dtype=torch.long, device=dec.device)
        for i, r in enumerate(rows):
            x[i, t - r.shape[0]:] = r
            mask[i, t - r.shape[0]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = dec.model(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=max(tails))
        logits = out.logits[:, -1] if explicit is None else [out.logits[i, out.logits.shape[1] - n:]
                                                            for i, n in enumerate(tails)]
        return Prefilled(logits, output_cache(out), mask, positions[:, -1:] + 1, None)
    kv_attention.require(dec.model)
    prefix = prompts[0].segments[0]
    if prefix_row is not None and prefix_row.position != prefix.shape[0]:
        raise ValueError(f"prefix_row holds {prefix_row.position} tokens, the prompts' prefix {prefix.shape[0]}")
    if prefix_row is None:
        kept = compressor.prefix_row()  # KV memories follow one prefix: their compressor runs it once
        prefix_row = kept if kept is not None and kept.position == prefix.shape[0] else None
    shared = prefix_row if prefix_row is not None else _extend(dec, _RowCache.empty(), prefix)[1]
    rows, texts = [], []
    laid: dict[tuple[int, int], CacheColumns] = {}  # a memory read by several prompts is laid out once
    for p in prompts:
        row = shared if p.segments[0].shape == prefix.shape and torch.equal(p.segments[0], prefix) \
            else _extend(dec, _RowCache.empty(), p.segments[0])[1]
        text, text_positions, memories = [], [], []
        for seg in p.segments[1:]:
            if isinstance(seg, KvMemory):
                memories.append((seg, row.position))
                row = replace(row, position=row.position + seg.source_tokens)
            else:
                text.append(seg)
                text_positions.append(torch.arange(row.position, row.position + seg.shape[0], device=dec.device))
                row = replace(row, position=row.position + seg.shape[0])
        rows.append(_append_memories(dec, row, memories, laid))
        texts.append((torch.cat(text), torch.cat(text_positions)))
    # A prompt ends with embeddings (the mode marker and the question), so every row has text.
    lengths = [t.shape[0] for t, _ in texts]
    t = max(lengths)
    x = texts[0][0].new_zeros(len(rows), t, texts[0][0].shape[-1])
    query_positions = torch.zeros(len(rows), t, dtype=torch.long, device=dec.device)
    real = torch.zeros(len(rows), t, dtype=torch.bool, device=dec.device)
    for i, (embeddings, positions) in enumerate(texts):
        n = embeddings.shape[0]
        x[i, :n], query_positions[i, :n], real[i, :n] = embeddings, positions, True
        query_positions[i, n:] = positions[-1]  # padding: reads what the row's last token reads, read by none
    cache, next_positions, valid, columns = _stack_rows(dec, rows)
    heads = valid[0].shape[1]
    view = KvView(valid=[torch.cat([v, real[:, None].expand(-1, heads, -1)], dim=2) for v in valid],
                  positions=[torch.cat([p, query_positions[:, None].expand(-1, heads, -1)], dim=2) for p in columns],
                  query_positions=query_positions, record=record)
    keep = sorted({j for n, tail in zip(lengths, tails, strict=True) for j in range(n - tail, n)})
    out = dec.model(inputs_embeds=x, position_ids=query_positions, **cache_arg(cache), use_cache=True,
                    logits_to_keep=torch.tensor(keep, device=dec.device), kv_view=view)
    at = {j: k for k, j in enumerate(keep)}
    if explicit is None:
        logits = torch.stack([out.logits[i, at[n - 1]] for i, n in enumerate(lengths)])
    else:
        logits = [out.logits[i, at[n - tail]:at[n - 1] + 1] for i, (n, tail) in enumerate(zip(lengths, tails, strict=True))]
    return Prefilled(logits, output_cache(out), None, next_positions, KvView(valid=view.valid, scores=view.scores))


@dataclass
class _RowCache:
    """One prompt's cache while it is built: per layer keys/values (kv_heads, columns, head_dim), which
    columns each head may read and their rotary positions (kv_heads, columns), and the next rotary
    position. A KV memory is padded to its fullest head per layer, so layers differ in width."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: list[torch.Tensor]
    position: int
    positions: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls) -> _RowCache:
        return cls([], [], [], 0)

    @classmethod
    def of_text(cls, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> _RowCache:
        """The row of a text the decoder already ran from position 0: per layer (keys, values), each
        (1, kv_heads, T, head_dim) as a forward's cache holds them."""
        heads, n = layers[0][0].shape[1], layers[0][0].shape[2]
        valid = torch.ones(heads, n, dtype=torch.bool, device=layers[0][0].device)
        at = torch.arange(n, device=valid.device).expand(heads, -1)
        return cls([k[0] for k, _ in layers], [v[0] for _, v in layers], [valid] * len(layers), n, [at] * len(layers))

    @property
    def columns(self) -> list[int]:
        """Cache columns of each layer."""
        return [k.shape[1] for k in self.keys]


def _extend(dec, row: _RowCache, segment: torch.Tensor | KvMemory) -> tuple[torch.Tensor | None, _RowCache]:
    """The row's cache after `segment`: a KV memory is appended (no logits), embeddings are prefilled
    (their last logits)."""
    if isinstance(segment, KvMemory):
        moved = replace(row, position=row.position + segment.source_tokens)
        return None, _append_memories(dec, moved, [(segment, row.position)], {})
    return _extend_rows(dec, [row], [segment])[0]


def _append_memories(dec, row: _RowCache, memories: Sequence[tuple[KvMemory, int]],
                     laid: dict[tuple[int, int], CacheColumns]) -> _RowCache:
    """The row's cache with KV memories appended, each (memory, the position it starts at) with its
    keys re-rotated there, in one concatenation per layer. `laid` keeps memories' cache columns by
    (object, shift), so one read twice is laid out once."""
    if not memories:
        return row
    parts = [(row.keys, row.values, row.valid, row.positions)] if row.keys else []
    for memory, start in memories:
        delta = start - memory.prefix_tokens
        if (id(memory), delta) not in laid:
            laid[id(memory), delta] = memory.cache_tensors(delta, kv_attention.rotary(dec.model), dec.dtype, dec.device)
        parts.append(laid[id(memory), delta])
    k, v, ok, pos = ([torch.cat(layer, dim=1) for layer in zip(*part, strict=True)] for part in zip(*parts, strict=True))
    return _RowCache(k, v, ok, row.position, pos)


def _extend_rows(dec, rows: list[_RowCache], segments: list[torch.Tensor]) -> list[tuple[torch.Tensor, _RowCache]]:
    """Prefill `segments[i]` (T_i, d) after `rows[i]` in one forward: (last logits, extended row) per row.

    The rows' caches are left-padded into one (padding masked by the KvView) and the inputs are
    right-padded: causal attention keeps every real token from reading a pad, and each row keeps only
    its own columns afterwards. All rows have a cache, or none does (the prefix).
    """
    from transformers import DynamicCache

    lengths = [s.shape[0] for s in segments]
    t = max(lengths)
    x = segments[0].new_zeros(len(rows), t, segments[0].shape[-1])
    for i, s in enumerate(segments):
        x[i, : s.shape[0]] = s
    positions = torch.tensor([[r.position] for r in rows], device=dec.device) + torch.arange(t, device=dec.device)
    if rows[0].keys:
        cache, _, valid, _ = _stack_rows(dec, rows)
        view = KvView(valid=valid)
    else:
        cache, view = DynamicCache(config=dec.model.config), KvView()
    last = sorted({n - 1 for n in lengths})
    out = dec.model(inputs_embeds=x, position_ids=positions, **cache_arg(cache), use_cache=True,
                    logits_to_keep=torch.tensor(last, device=dec.device), kv_view=view)
    layers = output_cache(out).layers
    extended = []
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        keys, values, valid, columns = [], [], [], []
        for j, layer in enumerate(layers):
            width = layer.keys.shape[2] - t  # the padded cache's columns before this forward
            start = width - (row.keys[j].shape[1] if row.keys else 0)
            keys.append(layer.keys[i, :, start : width + n])
            values.append(layer.values[i, :, start : width + n])
            heads = layer.keys.shape[1]
            new = torch.ones(heads, n, dtype=torch.bool, device=dec.device)
            at = positions[i, :n].expand(heads, -1)
            valid.append(torch.cat([row.valid[j], new], dim=1) if row.valid else new)
            columns.append(torch.cat([row.positions[j], at], dim=1) if row.positions else at)
        extended.append((out.logits[i, last.index(n - 1)],
                         _RowCache(keys, values, valid, row.position + n, columns)))
    return extended


def _stack_rows(dec, rows: list[_RowCache]
                ) -> tuple[Any, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Left-pad per-prompt caches into one batch cache: (cache, next positions (B, 1), and per layer
    each column's validity and rotary position (B, kv_heads, columns))."""
    keys, values, valid, columns = [], [], [], []
    for layer in range(len(rows[0].keys)):
        width = max(r.keys[layer].shape[1] for r in rows)
        keys.append(torch.stack([_left_pad(r.keys[layer], width) for r in rows]))
        values.append(torch.stack([_left_pad(r.values[layer], width) for r in rows]))
        valid.append(torch.stack([_left_pad(r.valid[layer], width) for r in rows]))
        columns.append(torch.stack([_left_pad(r.positions[layer], width) for r in rows]))
    positions = torch.tensor([[r.position] for r in rows], device=dec.device)
    return rebuild_cache(dec, keys, values), positions, valid, columns


def rebuild_cache(dec, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> Any:
    """A decoder cache holding per layer `keys[l]` / `values[l]` (B, kv_heads, columns, head_dim)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=dec.model.config)
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k, v, layer)
    return cache


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim 1 on the left with zeros (False) to `width` columns."""
    pad = width - t.shape[1]
    return t if pad == 0 else torch.cat([t.new_zeros(t.shape[0], pad, *t.shape[2:]), t], dim=1)

