"""`MemoryStore`: the one interface of persistent memory caches (`icae_rag.stores.open_store` picks one).

Two implementations share it (and one contract test suite, tests/test_lance_store.py):

- `SqliteMemoryStore` (icae_rag/stores/sqlite.py): a local directory, SQLite index + one safetensors file per
  memory. The embedded default: fastest on one machine, many processes of that machine at once.
- `LanceMemoryStore` (icae_rag/stores/lance.py): one Lance table, local or on an object store
  (s3://, gs://, az://), appended to by many processes on many machines at once.

Both key a memory by `MemoryKey` (text sha256 + compressor kind, version and backbone) and never
serve a memory whose bytes do not load or whose identity differs from its key.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BackboneMismatchError, InvalidInputError
from ..memories.base import Memory
from ..memories.soft_prompt import text_sha256
from ..text import check_text, check_texts_and_leads

if TYPE_CHECKING:
    from ..compressors.base import Compressor

logger = logging.getLogger(__name__)

LANCE_PREFIX = "lance://"
BLOB_DIR = "blobs"


@dataclass(frozen=True)
class MemoryKey:
    """What a memory is cached under: the text's sha256 and the compressor's identity."""

    text_sha256: str
    compressor: str
    version: str
    backbone: str

    @classmethod
    def of(cls, text: str, compressor: Compressor) -> MemoryKey:
        """The key of `text` compressed by `compressor`."""
        return cls(text_sha256(text), *compressor_identity(compressor))

    @classmethod
    def parse(cls, value: str) -> MemoryKey:
        """Read a key written by `str(key)`: "sha256/kind/version/backbone"."""
        parts = value.split("/", 3) if isinstance(value, str) else []
        if len(parts) != 4 or len(parts[0]) != 64 or not all(parts):
            raise InvalidInputError(f"{value!r} is not a memory key: expected 'sha256/kind/version/backbone'")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.text_sha256}/{self.compressor}/{self.version}/{self.backbone}"

    @property
    def identity(self) -> tuple[str, str, str]:
        """(compressor kind, version, backbone id) without the text part."""
        return self.compressor, self.version, self.backbone

    @property
    def blob(self) -> str:
        """Path of the blob inside the store directory (deterministic, so a rewrite replaces it)."""
        digest = hashlib.sha256(str(self).encode("utf-8")).hexdigest()
        return f"{BLOB_DIR}/{digest[:2]}/{digest}.safetensors"

    def _row(self) -> tuple[str, str, str, str]:
        return self.text_sha256, self.compressor, self.version, self.backbone


def compressor_identity(compressor: Compressor) -> tuple[str, str, str]:
    """(kind, version, backbone id): memories are only interchangeable when all three match."""
    return compressor.kind, compressor.version, compressor.backbone_id




@dataclass
class StoreStats:
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
    _lock: threading.RLock
    _stats: StoreStats
    _warned: set[tuple[str, str, str]]  # foreign compressor identities already warned about

    # --- lookups and writes, the same for every store: each store reads and writes its own way ---
    def get(self, text: str, compressor: Compressor) -> Memory | None:
        """The stored memory of `text` made by this compressor version, or None."""
        key = MemoryKey.of(check_text(text), compressor)
        found = self._load_many([key], compressor.decoder.device).get(key)
        self._count(hits=int(found is not None), misses=int(found is None))
        if found is None:
            self._note_other_versions([key])
        return found

    def get_or_compress(self, texts: Sequence[str], compressor: Compressor, *, batch_size: int = 8,
                        progress: bool = False, leads: Sequence[str | None] | None = None) -> list[Memory]:
        """One memory per text: stored ones loaded, the misses compressed in batches and stored.

        `leads` (kinds with `uses_leads`): per text, the text before it in its document; a miss is
        encoded after it. The entry is still keyed by the text alone, so a later lookup of the text
        finds the memory made in context.
        """
        keys, distinct = self._keys(texts, compressor, "get_or_compress", leads)
        found = self._load_many(list(distinct), compressor.decoder.device)
        missing = [k for k in distinct if k not in found]
        self._count(hits=len(found), misses=len(missing))
        if missing:
            self._note_other_versions(missing)
            found.update(zip(missing, self._compress(compressor, distinct, missing, leads, batch_size, progress),
                             strict=True))
        return [found[k] for k in keys]

    def put(self, text: str, compressor: Compressor, memory: Memory) -> None:
        """Store `memory` as the compression of `text` by `compressor`."""
        key = MemoryKey.of(check_text(text), compressor)
        check_put(key, memory)
        self._write([key], [memory])

    def compress_missing(self, texts: Sequence[str], compressor: Compressor, *, batch_size: int = 8,
                         progress: bool = False, leads: Sequence[str | None] | None = None) -> int:
        """Compress and store the texts that have no entry yet (nothing is read back); returns how many.
        `leads` as in `get_or_compress`."""
        _, distinct = self._keys(texts, compressor, "compress_missing", leads)
        present = self._present(list(distinct))
        todo = [k for k in distinct if k not in present]
        if todo:
            self._compress(compressor, distinct, todo, leads, batch_size, progress)
        return len(todo)

    def has(self, text: str, compressor: Compressor) -> bool:
        """Whether an entry exists for `text` and this compressor version (its bytes are read only by `get`)."""
        key = MemoryKey.of(check_text(text), compressor)
        return key in self._present([key])

    @staticmethod
    def _keys(texts: Sequence[str], compressor: Compressor, caller: str,
              leads: Sequence[str | None] | None) -> tuple[list[MemoryKey], dict[MemoryKey, tuple[str, str | None]]]:
        """Keys in order, and each distinct key once with its (text, lead): the first lead seen for it."""
        if isinstance(texts, str):
            raise InvalidInputError(f"{caller} takes a list of texts")
        texts = check_texts_and_leads(texts, leads)
        identity = compressor_identity(compressor)
        keys = [MemoryKey(text_sha256(t), *identity) for t in texts]
        distinct: dict[MemoryKey, tuple[str, str | None]] = {}
        for key, text, lead in zip(keys, texts, leads or [None] * len(texts), strict=True):
            distinct.setdefault(key, (text, lead))
        return keys, distinct

    def _compress(self, compressor: Compressor, distinct: dict[MemoryKey, tuple[str, str | None]], todo: list[MemoryKey],
                  leads: Sequence[str | None] | None, batch_size: int, progress: bool) -> list[Memory]:
        """Compress the texts of `todo` (after their leads, when leads were given) and store them."""
        texts = [distinct[k][0] for k in todo]
        # Leads are passed only when given, so a compressor without them keeps its plain signature.
        with_leads = {} if leads is None else {"leads": [distinct[k][1] for k in todo]}
        made = compressor.compress_many(texts, batch_size=batch_size, progress=progress, **with_leads)
        self._write(todo, made)
        return made

    def _note_other_versions(self, keys: Sequence[MemoryKey]) -> None:
        """Warn once per foreign compressor when it, not this one, has entries for these texts."""
        others = self._identities_of(sorted({k.text_sha256 for k in keys}))
        with self._lock:
            others -= {keys[0].identity} | self._warned
            self._warned |= others
        for other in sorted(others):
            logger.warning("%r holds memories of these texts made by %s, but this compressor is %s: they are not "
                           "served and the texts are compressed again", self, "/".join(other),
                           "/".join(keys[0].identity))

    def _count(self, *, hits: int, misses: int) -> None:
        with self._lock:
            self._stats.hits += hits
            self._stats.misses += misses

    @abc.abstractmethod
    def _load_many(self, keys: Sequence[MemoryKey], device: Any) -> dict[MemoryKey, Memory]:
        """The memories of `keys` that are stored and valid (a bad entry is dropped with a warning)."""

    @abc.abstractmethod
    def _present(self, keys: Sequence[MemoryKey]) -> set[MemoryKey]:
        """Which of `keys` have an entry (nothing is read but the index)."""

    @abc.abstractmethod
    def _write(self, keys: Sequence[MemoryKey], memories: Sequence[Memory]) -> None:
        """Store the memories under their keys (replacing or shadowing older entries)."""

    @abc.abstractmethod
    def _identities_of(self, shas: Sequence[str]) -> set[tuple[str, str, str]]:
        """The (kind, version, backbone) of every compressor with entries for these text hashes."""

    @property
    @abc.abstractmethod
    def stats(self) -> StoreStats:
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


def check_put(key: MemoryKey, memory: object) -> None:
    """Raise unless `memory` is a Memory made by `key`'s compressor from `key`'s text."""
    if not isinstance(memory, Memory):
        raise InvalidInputError(f"put takes a SoftPrompt or KvMemory, got {type(memory).__name__}")
    made_by = (memory.compressor, memory.compressor_version, memory.backbone)
    if made_by != key.identity:
        raise BackboneMismatchError(
            f"memory was made by {'/'.join(made_by)}, not by this compressor {'/'.join(key.identity)}: "
            "store it with the compressor that made it")
    if any(p.source_sha256 != key.text_sha256 for p in memory.pieces):
        raise InvalidInputError("memory was compressed from another text than the one given")


def matches_key(memory: Memory, key: MemoryKey) -> bool:
    """Whether a loaded memory is what `key` names (same compressor identity, same source text)."""
    made_by = (memory.compressor, memory.compressor_version, memory.backbone)
    return made_by == key.identity and all(p.source_sha256 == key.text_sha256 for p in memory.pieces)
