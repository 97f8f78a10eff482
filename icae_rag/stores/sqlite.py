"""`SqliteMemoryStore`: a persistent, embedded cache of memories, keyed by text and compressor.

A store is a directory::

    slots.sqlite3                     the index: one row per (text sha256, compressor kind,
                                      compressor version, backbone id), in the table `slots`
    blobs/<ab>/<key hash>.safetensors one memory per row (`SoftPrompt.save` / `KvMemory.save`)

Entries are tied to the compressor's trained weights (`compressor.version`) and to its decoder
(`compressor.backbone_id`): an entry made by another version or for another backbone is never
served, the text is compressed again.

On-disk names from 0.1, kept so existing stores open unchanged: the file `slots.sqlite3`, its table
`slots` and the column `soft_tokens` (the memory's decoder positions, `Memory.num_positions`).

Crash safety: a blob is written first (temp file, then rename), then its row is inserted in one
SQLite transaction, so a killed writer leaves at worst an unindexed blob or a temp file, both
ignored (`prune` deletes them). Fallback, by design: a row whose blob is missing or unreadable, or
holds another memory than the row says, is never returned: a warning is logged, the row is
deleted, and the lookup counts as a miss (the text is compressed again).

Concurrency: SQLite in WAL mode. Any number of processes may read while one writes; other writers
wait up to `busy_timeout` seconds. One `SqliteMemoryStore` object may be shared by threads. Keep the
directory on a local file system (WAL needs shared memory between processes).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CorruptFileError, InvalidInputError, MissingFileError
from ..memories.base import Memory
from .base import (
    BLOB_DIR,
    MemoryKey,
    MemoryStore,
    StoreStats,
    compressor_identity,
    matches_key,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "slots.sqlite3"  # on-disk name from 0.1, kept (see the module docstring)
PERSIST_SUBDIR = "icae_rag_memories"
# 0.1's name of PERSIST_SUBDIR: a persist dir that has only this one keeps using it (nothing is moved).
LEGACY_PERSIST_SUBDIR = "icae_rag_slots"
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


__all__ = ["MemoryKey", "SqliteMemoryStore", "StoreStats", "compressor_identity"]


class SqliteMemoryStore(MemoryStore):
    """A directory of cached memories with a SQLite index; see the module docstring.

    Example::

        with SqliteMemoryStore.in_persist_dir("./storage") as store:
            memories = store.get_or_compress(texts, compressor)   # compresses only the misses

    Raises:
        CorruptFileError: the index is not a SQLite database, or was written by a newer icae-rag.
        InvalidInputError: `path` is a file.
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 30.0) -> None:
        """Create or open the store directory `path`."""
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInputError(f"{self.path} is a file; a SQLite memory store needs a directory path")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._stats = StoreStats()
        self._warned: set[tuple[str, str, str]] = set()
        self._db = self._connect(busy_timeout)

    @classmethod
    def in_persist_dir(cls, persist_dir: str | os.PathLike, **kwargs) -> SqliteMemoryStore:
        """The store beside a LlamaIndex `StorageContext.persist` directory: `<persist_dir>/icae_rag_memories`.

        A persist dir written by 0.1 holds `icae_rag_slots/` instead: when only that one exists it is
        opened in place, so its memories keep being served (rename it when no process uses it to move on).
        """
        root = Path(persist_dir).expanduser()
        path, legacy = root / PERSIST_SUBDIR, root / LEGACY_PERSIST_SUBDIR
        if not path.exists() and legacy.is_dir():
            logger.info("memory store %s: using 0.1's directory name (0.2 names it %s)", legacy, PERSIST_SUBDIR)
            path = legacy
        elif path.exists() and legacy.is_dir():
            logger.warning("memory store %s is used; %s beside it (0.1's name) is not read: move its memories "
                           "into the new one or delete it", path, legacy)
        return cls(path, **kwargs)

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        db_path = self.path / DB_NAME
        # Autocommit (isolation_level=None): every statement is its own transaction unless BEGIN.
        db = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CorruptFileError(
                    f"memory store {self.path} was written by a newer icae-rag (schema {version}, this "
                    f"version reads {SCHEMA_VERSION}): upgrade icae-rag, or delete the directory to rebuild it")
            mode = _set_wal(db, busy_timeout)
            if mode.lower() != "wal":
                logger.warning("memory store %s: SQLite refused WAL mode (got %r); concurrent readers will "
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
                f"{db_path} is not a readable memory store index ({e}): delete the directory {self.path} "
                "to rebuild it (memories are compressed again on demand)") from e
        except BaseException:
            db.close()
            raise
        return db

    # --- storage primitives (lookups and writes are MemoryStore's) -----------------------------
    def _load_many(self, keys: Sequence[MemoryKey], device) -> dict[MemoryKey, Memory]:
        found = {key: self._load(key, device) for key in keys}
        return {key: memory for key, memory in found.items() if memory is not None}

    def _present(self, keys: Sequence[MemoryKey]) -> set[MemoryKey]:
        with self._lock:
            return {k for k in keys if self._db.execute(f"SELECT 1 FROM slots WHERE {_PK}", k._row()).fetchone()}

    def _write(self, keys: Sequence[MemoryKey], memories: Sequence[Memory]) -> None:
        for key, memory in zip(keys, memories, strict=True):
            self._write_one(key, memory)

    def _write_one(self, key: MemoryKey, prompt: Memory) -> None:
        prompt.save(self.path / key.blob)  # atomic: temp file + rename, before the row exists
        row = (*key._row(), key.blob, prompt.num_positions, prompt.source_tokens, time.time())
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._stats.writes += 1

    def _load(self, key: MemoryKey, device) -> Memory | None:
        with self._lock:
            row = self._db.execute(f"SELECT blob FROM slots WHERE {_PK}", key._row()).fetchone()
        if row is None:
            return None
        try:
            prompt = Memory.load(self.path / row[0], device=device)
            if not matches_key(prompt, key):
                raise CorruptFileError(f"{row[0]} holds another memory than its index row says")
        except (MissingFileError, CorruptFileError) as e:
            logger.warning("memory store %s: dropping an unreadable entry, its text will be compressed again (%s)",
                           self.path, e)
            self._drop(key, row[0])
            return None
        return prompt

    def _drop(self, key: MemoryKey, blob: str) -> None:
        with self._lock:
            deleted = self._db.execute(f"DELETE FROM slots WHERE {_PK} AND blob = ?", (*key._row(), blob)).rowcount
        if deleted:
            (self.path / blob).unlink(missing_ok=True)

    def _identities_of(self, shas: Sequence[str]) -> set[tuple[str, str, str]]:
        """The (kind, version, backbone) of every compressor with entries for these text hashes."""
        found: set[tuple[str, str, str]] = set()
        with self._lock:
            for i in range(0, len(shas), 500):  # stay under SQLite's bound-parameter limit
                chunk = shas[i : i + 500]
                rows = self._db.execute("SELECT DISTINCT compressor, version, backbone FROM slots WHERE "
                                        f"text_sha256 IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                found.update(tuple(r) for r in rows)
        return found

    # --- maintenance ----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of entries, of every compressor version."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM slots").fetchone()[0]

    @property
    def stats(self) -> StoreStats:
        """Hits, misses and writes of this object since it was opened (a copy)."""
        with self._lock:
            return StoreStats(**vars(self._stats))

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

    def __enter__(self) -> SqliteMemoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteMemoryStore({str(self.path)!r})"


def _set_wal(db: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL and return the journal mode SQLite reports. Two processes opening a new store at
    once can get "database is locked" here without SQLite waiting (the busy handler does not cover
    this switch), so retry until `busy_timeout`."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
