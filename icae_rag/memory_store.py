"""`MemoryStore`: the one interface of persistent memory caches (`icae_rag.stores.open_store` picks one).

Two implementations share it (and one contract test suite, tests/test_lance_store.py):

- `SlotStore` (icae_rag/slot_store.py): a local directory, SQLite index + one safetensors file per
  memory. The embedded default: fastest on one machine, many processes of that machine at once.
- `LanceMemoryStore` (icae_rag/lance_store.py): one Lance table, local or on an object store
  (s3://, gs://, az://), appended to by many processes on many machines at once.

Both key a memory by `SlotKey` (text sha256 + compressor kind, version and backbone) and never
serve a memory whose bytes do not load or whose identity differs from its key.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BackboneMismatchError, InvalidInputError
from .memory import Memory

if TYPE_CHECKING:
    from .compressors.base import Compressor
    from .slot_store import SlotKey

LANCE_PREFIX = "lance://"


@dataclass
class SlotStats:
    """Lookups served from the store (hits), not found (misses), and entries written."""

    hits: int = 0
    misses: int = 0
    writes: int = 0


class MemoryStore(abc.ABC):
    """A persistent cache of memories keyed by text and compressor identity.

    `path` is where the store lives (a local `Path`, or the URI string of a remote store);
    `open_store(str(store.path))` reopens the same store.
    """

    path: Any

    @abc.abstractmethod
    def get(self, text: str, compressor: Compressor) -> Memory | None:
        """The stored memory of `text` made by this compressor version, or None."""

    @abc.abstractmethod
    def has(self, text: str, compressor: Compressor) -> bool:
        """Whether an entry exists for `text` and this compressor version (its bytes are read only by `get`)."""

    @abc.abstractmethod
    def get_or_compress(self, texts: Sequence[str], compressor: Compressor, *, batch_size: int = 8,
                        progress: bool = False) -> list[Memory]:
        """One memory per text: stored ones loaded, the misses compressed in batches and stored."""

    @abc.abstractmethod
    def put(self, text: str, compressor: Compressor, memory: Memory) -> None:
        """Store `memory` as the compression of `text` by `compressor`."""

    @abc.abstractmethod
    def compress_missing(self, texts: Sequence[str], compressor: Compressor, *, batch_size: int = 8,
                         progress: bool = False) -> int:
        """Compress and store the texts that have no entry yet (nothing is read back); returns how many."""

    @property
    @abc.abstractmethod
    def stats(self) -> SlotStats:
        """Hits, misses and writes of this object since it was opened (a copy)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of distinct keys, of every compressor version."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's handles (idempotent)."""

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_put(key: SlotKey, memory: object) -> None:
    """Raise unless `memory` is a Memory made by `key`'s compressor from `key`'s text."""
    if not isinstance(memory, Memory):
        raise InvalidInputError(f"put takes a SoftPrompt or KvMemory, got {type(memory).__name__}")
    made_by = (memory.compressor, memory.compressor_version, memory.backbone)
    if made_by != key.identity:
        raise BackboneMismatchError(
            f"soft prompt was made by {'/'.join(made_by)}, not by this compressor {'/'.join(key.identity)}: "
            "store it with the compressor that made it")
    if any(p.source_sha256 != key.text_sha256 for p in memory.pieces):
        raise InvalidInputError("soft prompt was compressed from another text than the one given")


def matches_key(memory: Memory, key: SlotKey) -> bool:
    """Whether a loaded memory is what `key` names (same compressor identity, same source text)."""
    made_by = (memory.compressor, memory.compressor_version, memory.backbone)
    return made_by == key.identity and all(p.source_sha256 == key.text_sha256 for p in memory.pieces)


