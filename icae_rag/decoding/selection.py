"""The entries a question reads: each stored entry's attention from the question, read with every
entry of every memory in view, so memories read together compete for one budget as the question
sees them (what a memory keeps alone, under the repeat that scored it, is not what a question needs
among other memories; docs/kvzip.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InvalidInputError
from ..memories.kv_memory import KvMemory
from .prefill import _prefill
from .prompts import Context, Prompt, _layout
from .reader import MemoryReader

# The share of a read budget the question's attention chooses; the stored scores choose the rest.
# Chosen on techdocs-dev (docs/kvzip.md, "The read budget"): the question alone keeps too little of
# what its few tokens do not look at, the stored scores alone what each passage needs read alone.
QUESTION_SHARE = 2 / 3


@torch.no_grad()
def question_scores(compressor: MemoryReader, prompt: Prompt) -> list[torch.Tensor]:
    """Per KV memory of `prompt`, in order: each entry's largest attention weight (any query head of
    its group) from the prompt's text after the prefix (separators, question), float32, in the
    memory's entry order."""
    with compressor.reading():
        view = _prefill(compressor, [prompt], record=True).view
    prefix = prompt.segments[0].shape[0]  # the prefix is cached as one column per token, in every layer
    offsets = [prefix] * len(view.scores)
    out = []
    for memory in (s for s in prompt.segments if isinstance(s, KvMemory)):
        owner, rank = memory.entry_columns()
        layer, head = owner // memory.kv_heads, owner % memory.kv_heads
        scores = torch.empty(memory.kept_entries)
        for i in range(memory.layers):
            at = layer == i
            scores[at] = view.scores[i][0, head[at], offsets[i] + rank[at]].float().cpu()
            offsets[i] += int(memory.counts[i].max())  # a memory is as wide as its fullest head, per layer
        out.append(scores)
    return out


def read_choice(compressor: MemoryReader, contexts: Sequence[Context], question: str, entries: int
                ) -> list[torch.Tensor]:
    """Per KV memory among `contexts`, a selection score per entry: keeping the `entries` highest over
    all of them keeps QUESTION_SHARE of the budget the question attends to most and fills the rest by the scores
    the memories store (the repeat's: what the passage needs in general). The question alone keeps
    too little of what its few tokens do not look at; the stored scores alone keep what each passage
    needs read alone, not what this question needs among the others."""
    memories = [c for c in contexts if isinstance(c, KvMemory)]
    if any(m.scores is None for m in memories):
        raise InvalidInputError("reading memories at a budget needs the scores kvzip stores with them: "
                                "compress the texts again")
    asked = torch.cat(question_scores(compressor, _layout(compressor, contexts, "answer", question)))
    stored = torch.cat([m.scores.float().cpu() for m in memories])
    by_question = asked.topk(min(round(entries * QUESTION_SHARE), len(asked))).indices
    # Ranks, not raw scores, decide: the two scores come from different queries and are not comparable.
    choice = stored.argsort().argsort().float() / max(1, len(stored))  # the stored order, in [0, 1)
    choice[by_question] = 2.0  # above every stored rank
    return list(choice.split([m.kept_entries for m in memories]))
