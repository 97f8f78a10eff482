"""`MemoryReader`: what decoding needs from a compressor.

Decoding runs a compressor's decoder over a prompt of memories and text, and calls back six of its
methods to lay that prompt out. Every `Compressor` is a `MemoryReader`; typing `decoding/` against
this protocol instead of `compressors.base.Compressor` keeps `decoding/` below `compressors/`
(which hands `answer` / `stream` to it) in the import graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from ..memories.base import Memory
    from ..models.backbones import DecoderBackbone


class MemoryReader(Protocol):
    """The members of a compressor that `icae_rag.decoding` uses."""

    @property
    def decoder(self) -> DecoderBackbone:
        """The decoder that reads the memories (its model, tokenizer, dtype and device)."""
        ...

    def reading(self) -> AbstractContextManager[Any]:
        """Context manager in which the decoder reads memories (ICAE switches its LoRA off)."""
        ...

    def prefix_row(self) -> Any | None:
        """The prompt prefix that KV memories follow, already run (`prefill._RowCache`), or None."""
        ...

    def budget_contexts(self, contexts: Sequence[Any], question: str | None = None) -> list[Any]:
        """The contexts as this compressor reads them, for `question` if one is asked (kvzip may
        prune the memories read together to one budget)."""
        ...

    def read_entries(self, contexts: Sequence[Any]) -> int | None:
        """How many entries of the KV memories among `contexts` a question's answer reads (one budget
        over them all, chosen at its prefill), or None to read them as given."""
        ...

    def check_memory(self, memory: Memory) -> None:
        """Raise if the decoder cannot read `memory` (made for another backbone or compressor)."""
        ...

    def mode_embedding(self, mode: str) -> torch.Tensor:
        """The rows that mark a mode (one of `prompts.MODES`); may be empty."""
        ...
