"""`SlotStore`: a persistent, embedded cache of soft prompts, keyed by text and compressor.

A store is a directory::

    slots.sqlite3                     the index: one row per (text sha256, compressor kind,
                                      compressor version, backbone id)
    blobs/<ab>/<key hash>.safetensors one memory per row (`SoftPrompt.save` / `KvMemory.save`)

Entries are tied to the compressor's trained weights (`compressor.version`) and to its decoder
(`compressor.backbone_id`): an entry made by another version or for another backbone is never
served, the text is compressed again.

Crash safety: a blob is written first (temp file, then rename), then its row is inserted in one
SQLite transaction, so a killed writer leaves at worst an unindexed blob or a temp file, both
ignored (`prune` deletes them). Fallback, by design: a row whose blob is missing or unreadable, or
holds another soft prompt than the row says, is never returned: a warning is logged, the row is
deleted, and the lookup counts as a miss (the text is compressed again).

Concurrency: SQLite in WAL mode. Any number of processes may read while one writes; other writers
wait up to `busy_timeout` seconds. One `SlotStore` object may be shared by threads. Keep the
directory on a local file system (WAL needs shared memory between processes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CorruptFileError, InvalidInputError, MissingFileError
from .memory import Memory
from .memory_store import MemoryStore, SlotStats, check_put, matches_key
from .soft_prompt import text_sha256

if TYPE_CHECKING:
    from .compressors.base import Compressor

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "slots.sqlite3"
BLOB_DIR = "blobs"
PERSIST_SUBDIR = "icae_rag_slots"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    text_sha256   TEXT NOT NULL,
    compressor    TEXT NOT NULL,
    version       TEXT NOT NULL,
    backbone      TEXT NOT NULL,
    blob          TEXT NOT NULL,
    soft_tokens   INTEGER NOT NULL,
    source_tokens INTEGER NOT NULL,
    created       REAL NOT NULL,
    PRIMARY KEY (text_sha256, compressor, version, backbone)
) WITHOUT ROWID
"""
_PK = "text_sha256 = ? AND compressor = ? AND version = ? AND backbone = ?"


@dataclass(frozen=True)
class SlotKey:
    """What a soft prompt is cached under: the text's sha256 and the compressor's identity."""

    text_sha256: str
    compressor: str
    version: str
    backbone: str

    @classmethod
    def of(cls, text: str, compressor: Compressor) -> SlotKey:
        """The key of `text` compressed by `compressor`."""
        return cls(text_sha256(text), *compressor_identity(compressor))

    @classmethod
    def parse(cls, value: str) -> SlotKey:
        """Read a key written by `str(key)`: "sha256/kind/version/backbone"."""
        parts = value.split("/", 3) if isinstance(value, str) else []
        if len(parts) != 4 or len(parts[0]) != 64 or not all(parts):
            raise InvalidInputError(f"{value!r} is not a slot key: expected 'sha256/kind/version/backbone'")
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
    """(kind, version, backbone id): soft prompts are only interchangeable when all three match."""
    return compressor.kind, compressor.version, compressor.backbone_id


__all__ = ["SlotKey", "SlotStats", "SlotStore", "compressor_identity"]


class SlotStore(MemoryStore):
    """A directory of cached soft prompts with a SQLite index; see the module docstring.

    Example::

        with SlotStore.in_persist_dir("./storage") as store:
            prompts = store.get_or_compress(texts, compressor)   # compresses only the misses

    Raises:
        CorruptFileError: the index is not a SQLite database, or was written by a newer icae-rag.
        InvalidInputError: `path` is a file.
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 30.0) -> None:
        """Create or open the store directory `path`."""
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInputError(f"{self.path} is a file; a slot store needs a directory path")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._stats = SlotStats()
        self._warned: set[tuple[str, str, str]] = set()
        self._db = self._connect(busy_timeout)

    @classmethod
    def in_persist_dir(cls, persist_dir: str | os.PathLike, **kwargs) -> SlotStore:
        """The store beside a LlamaIndex `StorageContext.persist` directory: `<persist_dir>/icae_rag_slots`."""
        return cls(Path(persist_dir).expanduser() / PERSIST_SUBDIR, **kwargs)

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        db_path = self.path / DB_NAME
        # Autocommit (isolation_level=None): every statement is its own transaction unless BEGIN.
        db = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CorruptFileError(
                    f"slot store {self.path} was written by a newer icae-rag (schema {version}, this "
                    f"version reads {SCHEMA_VERSION}): upgrade icae-rag, or delete the directory to rebuild it")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                logger.warning("slot store %s: SQLite refused WAL mode (got %r); concurrent readers will "
                               "wait for writers", self.path, mode)
            db.execute("PRAGMA synchronous = NORMAL")
            if version == 0:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
        except sqlite3.OperationalError:
            db.close()
            raise  # locked or unwritable: not corruption, keep SQLite's own message
        except sqlite3.DatabaseError as e:
            db.close()
            raise CorruptFileError(
                f"{db_path} is not a readable slot store index ({e}): delete the directory {self.path} "
                "to rebuild it (soft prompts are compressed again on demand)") from e
        except BaseException:
            db.close()
            raise
        return db

    # --- lookups --------------------------------------------------------------------------------
    def get(self, text: str, compressor: Compressor) -> Memory | None:
        """The cached soft prompt of `text` made by this compressor version, or None."""
        key = SlotKey.of(_check(text), compressor)
        prompt = self._load(key, compressor.decoder.device)
        with self._lock:
            if prompt is None:
                self._stats.misses += 1
            else:
                self._stats.hits += 1
        if prompt is None:
            self._note_other_versions([key])
        return prompt

    def has(self, text: str, compressor: Compressor) -> bool:
        """Whether an entry exists for `text` and this compressor version (its blob is read only by `get`)."""
        key = SlotKey.of(_check(text), compressor)
        with self._lock:
            return self._db.execute(f"SELECT 1 FROM slots WHERE {_PK}", key._row()).fetchone() is not None

    def get_or_compress(self, texts: Sequence[str], compressor: Compressor, *, batch_size: int = 8,
                        progress: bool = False) -> list[Memory]:
        """One soft prompt per text: cached ones loaded, the misses compressed in batches and stored."""
        if isinstance(texts, str):
            raise InvalidInputError("get_or_compress takes a list of texts; use get() for one")
        texts = [_check(t) for t in texts]
        identity = compressor_identity(compressor)
        keys = [SlotKey(text_sha256(t), *identity) for t in texts]
        found: dict[SlotKey, Memory] = {}
        missing: dict[SlotKey, str] = {}
        device = compressor.decoder.device
        for key, text in dict(zip(keys, texts, strict=True)).items():  # each distinct text once
            prompt = self._load(key, device)
            if prompt is None:
                missing[key] = text
            else:
                found[key] = prompt
        with self._lock:
            self._stats.hits += len(found)
            self._stats.misses += len(missing)
        if missing:
            self._note_other_versions(list(missing))
            made = compressor.compress_many(list(missing.values()), batch_size=batch_size, progress=progress)
            for key, prompt in zip(missing, made, strict=True):
                self._write(key, prompt)
                found[key] = prompt
        return [found[k] for k in keys]

    # --- writes ---------------------------------------------------------------------------------
    def put(self, text: str, compressor: Compressor, soft_prompt: Memory) -> None:
        """Store `soft_prompt` as the compression of `text` by `compressor` (replaces an older entry)."""
        key = SlotKey.of(_check(text), compressor)
        check_put(key, soft_prompt)
        self._write(key, soft_prompt)

    def compress_missing(self, texts: Sequence[str], compressor: Compressor, *, batch_size: int = 8,
                         progress: bool = False) -> int:
        """Compress and store the texts that have no entry yet (nothing is read back); returns how many."""
        if isinstance(texts, str):
            raise InvalidInputError("compress_missing takes a list of texts")
        identity = compressor_identity(compressor)
        todo = {SlotKey(text_sha256(t), *identity): t for t in (_check(t) for t in texts)}
        with self._lock:
            todo = {k: t for k, t in todo.items()
                    if self._db.execute(f"SELECT 1 FROM slots WHERE {_PK}", k._row()).fetchone() is None}
        if todo:
            made = compressor.compress_many(list(todo.values()), batch_size=batch_size, progress=progress)
            for key, memory in zip(todo, made, strict=True):
                self._write(key, memory)
        return len(todo)

    def _write(self, key: SlotKey, prompt: Memory) -> None:
        prompt.save(self.path / key.blob)  # atomic: temp file + rename, before the row exists
        row = (*key._row(), key.blob, prompt.num_soft_tokens, prompt.source_tokens, time.time())
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._stats.writes += 1

    def _load(self, key: SlotKey, device) -> Memory | None:
        with self._lock:
            row = self._db.execute(f"SELECT blob FROM slots WHERE {_PK}", key._row()).fetchone()
        if row is None:
            return None
        try:
            prompt = Memory.load(self.path / row[0], device=device)
            if not matches_key(prompt, key):
                raise CorruptFileError(f"{row[0]} holds another soft prompt than its index row says")
        except (MissingFileError, CorruptFileError) as e:
            logger.warning("slot store %s: dropping an unreadable entry, its text will be compressed again (%s)",
                           self.path, e)
            self._drop(key, row[0])
            return None
        return prompt

    def _drop(self, key: SlotKey, blob: str) -> None:
        with self._lock:
            deleted = self._db.execute(f"DELETE FROM slots WHERE {_PK} AND blob = ?", (*key._row(), blob)).rowcount
        if deleted:
            (self.path / blob).unlink(missing_ok=True)

    def _note_other_versions(self, keys: Sequence[SlotKey]) -> None:
        """Warn once per foreign compressor when it, not this one, has entries for these texts."""
        shas = sorted({k.text_sha256 for k in keys})
        others: set[tuple[str, str, str]] = set()
        with self._lock:
            for i in range(0, len(shas), 500):  # stay under SQLite's bound-parameter limit
                chunk = shas[i : i + 500]
                rows = self._db.execute("SELECT DISTINCT compressor, version, backbone FROM slots WHERE "
                                        f"text_sha256 IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                others.update(tuple(r) for r in rows)
            others -= {keys[0].identity} | self._warned
            self._warned |= others
        for other in sorted(others):
            logger.warning(
                "slot store %s holds soft prompts of these texts made by %s, but this compressor is %s: "
                "they are not served and the texts are compressed again", self.path, "/".join(other),
                "/".join(keys[0].identity))

    # --- maintenance ----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of entries, of every compressor version."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM slots").fetchone()[0]

    @property
    def stats(self) -> SlotStats:
        """Hits, misses and writes of this object since it was opened (a copy)."""
        with self._lock:
            return SlotStats(**vars(self._stats))

    def prune(self, *, min_age: float = 3600.0) -> int:
        """Delete blobs without a row and leftover temp files older than `min_age` seconds; returns the count.

        Files younger than `min_age` are kept: another process may be between writing a blob and
        inserting its row.
        """
        with self._lock:
            indexed = {r[0] for r in self._db.execute("SELECT blob FROM slots")}
        cutoff, removed = time.time() - min_age, 0
        for path in (self.path / BLOB_DIR).glob("*/*"):
            rel = path.relative_to(self.path).as_posix()
            if rel not in indexed and path.is_file() and path.stat().st_mtime <= cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        """Close the index (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SlotStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SlotStore({str(self.path)!r})"


def _check(text: object) -> str:
    from .text import check_text

    return check_text(text)
