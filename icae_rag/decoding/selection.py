"""The entries a question's answer reads: each stored entry's attention from the question, read with
every entry of every memory in view, so memories read together compete for one budget as the
question sees them (what a memory keeps alone, under the repeat that scored it, is not what a
question needs among other memories; docs/kvzip.md).

The question's own prefill reads every stored entry and records that attention; its answer's tokens
then read the chosen entries only (`keep_read_entries`): the cache a decoding step reads shrinks to
the budget, and the question is read once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ..memories.kv_memory import KvMemory
from ..models.kv_attention import KvView
from .prefill import Prefilled, _prefill, rebuild_cache
from .prompts import Prompt
from .reader import MemoryReader

# The share of a read budget the question's attention chooses; the stored scores choose the rest.
# Chosen on techdocs-dev (docs/kvzip.md, "The read budget (the default)"): the question alone keeps
# too little of what its few tokens do not look at, the stored scores alone what each passage needs
# read alone.
QUESTION_SHARE = 2 / 3


class _Places(NamedTuple):
    """Where a memory's entries sit in a batch cache: per layer the slice of its entries (entries are
    ordered by layer, then head), and each entry's KV head and cache column."""

    layers: list[slice]
    head: torch.Tensor
    column: torch.Tensor


def _entry_columns(prompt: Prompt, widths: Sequence[int]) -> list[_Places]:
    """Per KV memory of `prompt`, where its entries sit in a batch cache of `widths[l]` columns per
    layer before the prompts' text, the prompt's row left-padded to it (the prefix takes one column
    per token, a memory as many as its fullest head per layer)."""
    memories = [s for s in prompt.segments if isinstance(s, KvMemory)]
    fullest = [m.counts.max(dim=1).values.long() for m in memories]  # per memory, its width per layer
    offsets = torch.tensor(widths) - sum(fullest)
    out = []
    for memory, width in zip(memories, fullest, strict=True):
        owner, rank = memory.entry_columns()
        bounds = [0, *memory.counts.sum(dim=1).long().cumsum(0).tolist()]
        out.append(_Places([slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)],
                           owner % memory.kv_heads, offsets[owner // memory.kv_heads] + rank))
        offsets = offsets + width
    return out


def _recorded(view: KvView, row: int, places: Sequence[_Places]) -> torch.Tensor:
    """The recorded attention of every entry at `places`, one tensor over all of them (float32, CPU)."""
    out = []
    for p in places:
        out += [view.scores[i][row, p.head[at], p.column[at]].float().cpu() for i, at in enumerate(p.layers)]
    return torch.cat(out)


def read_choice(asked: torch.Tensor, memories: Sequence[KvMemory], entries: int) -> list[torch.Tensor]:
    """Per memory, which entries to read (bool): of `entries` over all of them, QUESTION_SHARE the
    entries the question attends to most (`asked`, one score per entry of the memories in order),
    the rest by the scores the memories store (the repeat's: what the passage needs in general)."""
    # The two scores come from different queries and are not comparable: the question's share goes
    # first, then the stored order fills the rest.
    choice = torch.cat([m.scores.float().cpu() for m in memories])
    choice[asked.topk(min(round(entries * QUESTION_SHARE), len(asked))).indices] = float("inf")
    keep = torch.zeros(len(choice), dtype=torch.bool)
    keep[choice.topk(min(entries, len(choice))).indices] = True
    return list(keep.split([m.kept_entries for m in memories]))


def _text_columns(prompts: Sequence[Prompt]) -> int:
    """The columns the prompts' text after the prefix takes in a prefill forward (the longest row's)."""
    return max(sum(s.shape[0] for s in p.segments[1:] if not isinstance(s, KvMemory)) for p in prompts)


@torch.no_grad()
def question_choice(compressor: MemoryReader, prompt: Prompt) -> list[torch.Tensor]:
    """Per KV memory of `prompt` (with `read_entries`), which entries its answer reads (bool), as
    `keep_read_entries` chooses them; for showing what a question read."""
    with compressor.reading():
        view = _prefill(compressor, [prompt], record=True).view
    return _chosen([prompt], view)[0][1]


def _chosen(prompts: Sequence[Prompt], view: KvView) -> list[tuple[list[_Places], list[torch.Tensor]] | None]:
    """Per prompt with `read_entries` (None for the others), where its memories' entries sit in the
    batch cache of `view` (recorded) and, per memory, which entries its answer reads."""
    text = _text_columns(prompts)
    widths = [v.shape[2] - text for v in view.valid]
    out = []
    for row, prompt in enumerate(prompts):
        if prompt.read_entries is None:
            out.append(None)
            continue
        places = _entry_columns(prompt, widths)
        memories = [s for s in prompt.segments if isinstance(s, KvMemory)]
        out.append((places, read_choice(_recorded(view, row, places), memories, prompt.read_entries)))
    return out


def read_prefill(compressor: MemoryReader, prompts: Sequence[Prompt], prefix_row: Any = None) -> Prefilled:
    """The prompts prefilled (`prefill._prefill`); a prompt with `read_entries` keeps, for what
    follows, the entries its question chose (`keep_read_entries`)."""
    budget = any(p.read_entries is not None for p in prompts)
    prefilled = _prefill(compressor, prompts, prefix_row=prefix_row, record=budget)
    return keep_read_entries(compressor, prompts, prefilled) if budget else prefilled


def keep_read_entries(compressor: MemoryReader, prompts: Sequence[Prompt], prefilled: Prefilled) -> Prefilled:
    """`prefilled` (run with `record`) with each prompt's memories cut to its `read_entries`, as
    `read_choice` chooses them from the question's recorded attention: the cache keeps, per layer and
    head, only the columns read from here on (packed left, so it shrinks)."""
    cache, valid = _packed(compressor, prefilled.cache, _read_mask(prompts, prefilled.view))
    return prefilled._replace(cache=cache, view=KvView(valid=valid))


def _read_mask(prompts: Sequence[Prompt], view: KvView) -> list[torch.Tensor]:
    """`view.valid` with the entries each prompt's answer does not read switched off."""
    valid = [v.clone() for v in view.valid]
    for row, chosen in enumerate(_chosen(prompts, view)):
        for p, keep in zip(*(chosen or ((), ())), strict=True):
            for i, at in enumerate(p.layers):
                drop = ~keep[at]
                valid[i][row, p.head[at][drop].to(valid[i].device), p.column[at][drop].to(valid[i].device)] = False
    return valid


def _packed(compressor: MemoryReader, cache: Any, valid: list[torch.Tensor]) -> tuple[Any, list[torch.Tensor]]:
    """The cache with each (row, head)'s valid columns moved left in their order, as wide per layer as
    the most any (row, head) keeps; and the matching validity. Rotary positions are already in the
    keys, and later tokens read every valid cached column, so column order no longer matters."""
    keys, values, out_valid = [], [], []
    for i, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values
        ok = valid[i]
        width = int(ok.sum(-1).max())
        # A stable sort puts each (row, head)'s valid columns first, in their order.
        order = (~ok).to(torch.uint8).argsort(dim=-1, stable=True)[..., :width]
        index = order[..., None].expand(-1, -1, -1, k.shape[-1])
        keys.append(k.gather(2, index))
        values.append(v.gather(2, index))
        out_valid.append(ok.gather(2, order))
    return rebuild_cache(compressor.decoder, keys, values), out_valid

