"""`LanceMemoryStore`: memories in one Lance table, written by many processes on many machines at once.

One row per stored memory::

    text_sha256, compressor, version, backbone   the `MemoryKey` fields
    row_id                                       a random id of the row (for precise deletes)
    memory                                       the memory's safetensors file, as bytes
    soft_tokens, source_tokens                   sizes, for queries over the table (soft_tokens: the
                                                 memory's context positions; 0.1's column name, kept
                                                 so existing tables load)
    created                                      Unix time of the write

The table lives at a local path or an object-store URI (``s3://bucket/memories.lance``);
`storage_options` (credentials, region, endpoint) are passed to Lance as they are.

Concurrency: opening a store creates its empty table if it is missing (racing creators are
harmless: the table holds no rows yet). Every write is then one Lance append: appends from many
writers commit optimistically and never conflict with each other; Lance retries the commit itself.
On S3, concurrent commits need an object store with conditional writes or Lance's DynamoDB commit
(``s3+ddb://``); see Lance's object-store documentation.

Duplicates, by design: Lance enforces no primary key, so two writers that compress the same text
at the same time both append it. Reads dedupe: of the rows of one key, the oldest that loads and
matches its key is served (so every reader serves the same row). `compact()` deletes the extra rows
and compacts the table's files; run it after large concurrent ingestions. A row whose bytes do not
load or hold another memory than its key says is never served: it is deleted (warning logged) and
the lookup is a miss, as in `SqliteMemoryStore`.

Memories are read only through safetensors (`Memory.load`), never unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CorruptFileError, InvalidInputError, MissingFileError
from ..memories.base import Memory
from .base import LANCE_PREFIX, MemoryKey, MemoryStore, StoreStats, matches_key

if TYPE_CHECKING:
    import pyarrow as pa


logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_KEY = "icae_rag_memory_store"
KEY_COLUMNS = ("text_sha256", "compressor", "version", "backbone")
CREATE_RETRIES = 5  # racing creators of a new table; appends need no retry of ours
IN_CHUNK = 256  # text hashes per IN (...) filter


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [(name, pa.string()) for name in KEY_COLUMNS] + [
            ("row_id", pa.string()),
            ("memory", pa.large_binary()),
            ("soft_tokens", pa.int64()),
            ("source_tokens", pa.int64()),
            ("created", pa.float64()),
        ],
        metadata={SCHEMA_KEY: json.dumps({"schema": SCHEMA_VERSION})},
    )


def _lance() -> Any:
    try:
        import lance
    except ImportError as e:
        raise InvalidInputError("the Lance memory store needs pylance: pip install 'icae-rag[scale]'") from e
    return lance


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identity_filter(identity: tuple[str, str, str]) -> str:
    return " AND ".join(f"{col} = {_quote(v)}" for col, v in zip(KEY_COLUMNS[1:], identity, strict=True))


class LanceMemoryStore(MemoryStore):
    """Memories in a Lance table at a local path or object-store URI; see the module docstring.

    Example::

        store = LanceMemoryStore("s3://bucket/memories.lance", storage_options={"region": "eu-west-1"})
        memories = store.get_or_compress(texts, compressor)   # compresses only the misses

    Raises:
        CorruptFileError: the table was written by a newer icae-rag, or is not a memory table.
    """

    def __init__(self, uri: str | os.PathLike, *, storage_options: dict[str, str] | None = None) -> None:
        """Open the table at `uri` (created on the first write); `lance://` is stripped off."""
        spelled = os.fspath(uri)
        self.path = spelled  # as given, so open_store(str(store.path)) reopens a Lance store
        self.uri = spelled[len(LANCE_PREFIX):] if spelled.startswith(LANCE_PREFIX) else spelled
        if "://" not in self.uri:
            self.uri = str(Path(self.uri).expanduser())
        self.storage_options = dict(storage_options or {})
        self._lock = threading.RLock()
        self._stats = StoreStats()
        self._warned: set[tuple[str, str, str]] = set()
        self._create_if_missing()
        self._check_schema()

    # --- table access ---------------------------------------------------------------------------
    def _dataset(self) -> Any | None:
        """The table at its newest version (other writers may have appended), or None before the first write."""
        lance = _lance()
        try:
            return lance.dataset(self.uri, storage_options=self.storage_options or None)
        except ValueError as e:  # Lance reports a missing table as ValueError("... was not found")
            if "not found" in str(e).lower():
                return None
            raise

    def _check_schema(self) -> None:
        ds = self._dataset()
        if ds is None:
            return
        meta = ds.schema.metadata or {}
        raw = meta.get(SCHEMA_KEY.encode())
        missing = set(_schema().names) - set(ds.schema.names)
        if raw is None or missing:
            raise CorruptFileError(f"{self.uri} is a Lance table but not an icae-rag memory store "
                                   f"(missing {sorted(missing) or 'its schema tag'}): point --store elsewhere")
        version = json.loads(raw).get("schema", 0)
        if version > SCHEMA_VERSION:
            raise CorruptFileError(
                f"memory store {self.uri} was written by a newer icae-rag (schema {version}, this version "
                f"reads {SCHEMA_VERSION}): upgrade icae-rag")

    def _rows(self, identity: tuple[str, str, str] | None, shas: Iterable[str], columns: list[str]) -> list[dict]:
        """Rows of these text hashes (and, if given, this compressor identity), oldest first."""
        ds = self._dataset()
        shas = sorted(set(shas))
        if ds is None or not shas:
            return []
        rows: list[dict] = []
        for i in range(0, len(shas), IN_CHUNK):
            where = f"text_sha256 IN ({', '.join(_quote(s) for s in shas[i:i + IN_CHUNK])})"
            if identity is not None:
                where += " AND " + _identity_filter(identity)
            rows += ds.to_table(columns=columns, filter=where).to_pylist()
        rows.sort(key=lambda r: (r.get("created", 0.0), r.get("row_id", "")))
        return rows

    def _create_if_missing(self) -> None:
        """Create the empty table, so that every write of rows is an append.

        Racing creators may each commit an empty first version; no rows can be lost that way,
        whereas two racing creates that carry rows could leave one writer's rows out.
        """
        import pyarrow as pa

        lance = _lance()
        for attempt in range(CREATE_RETRIES):
            if self._dataset() is not None:
                return
            try:
                lance.write_dataset(pa.Table.from_pylist([], schema=_schema()), self.uri, mode="create",
                                    storage_options=self.storage_options or None)
                return
            except (OSError, ValueError) as e:  # another writer created it first: fine
                logger.debug("memory store %s: another writer created the table (%s)", self.uri, e)
                time.sleep(0.05 * (attempt + 1))
        if self._dataset() is None:
            raise CorruptFileError(f"could not create the memory store table {self.uri}: check the URI and "
                                   "that storage_options allow writing there")

    def _append(self, table: pa.Table) -> None:
        # Lance commits appends optimistically and retries them itself when another writer committed first.
        _lance().write_dataset(table, self.uri, mode="append", storage_options=self.storage_options or None)

    # --- storage primitives (lookups and writes are MemoryStore's) -----------------------------
    def _present(self, keys: Sequence[MemoryKey]) -> set[MemoryKey]:
        if not keys:
            return set()
        present = {r["text_sha256"] for r in self._rows(keys[0].identity, [k.text_sha256 for k in keys], ["text_sha256"])}
        return {k for k in keys if k.text_sha256 in present}

    def _load_many(self, keys: Sequence[MemoryKey], device: Any) -> dict[MemoryKey, Memory]:
        """The memories of `keys` that are stored and valid (bad rows are deleted with a warning)."""
        if not keys:
            return {}
        wanted = set(keys)
        identity = keys[0].identity
        found: dict[MemoryKey, Memory] = {}
        bad: list[str] = []
        for row in self._rows(identity, [k.text_sha256 for k in keys], [*KEY_COLUMNS, "row_id", "memory"]):
            key = MemoryKey(*(row[c] for c in KEY_COLUMNS))
            if key not in wanted or key in found:  # oldest valid row wins: every reader serves the same one
                continue
            try:
                memory = Memory.from_bytes(row["memory"], f"{self.uri} row {row['row_id']}", device=device)
                if not matches_key(memory, key):
                    raise CorruptFileError(f"row {row['row_id']} holds another memory than its key says")
            except (MissingFileError, CorruptFileError) as e:
                logger.warning("memory store %s: dropping an unreadable row, its text will be compressed "
                               "again (%s)", self.uri, e)
                bad.append(row["row_id"])
                continue
            found[key] = memory
        if bad:
            self._delete_rows(bad)
        return found

    def _write(self, keys: Sequence[MemoryKey], memories: Sequence[Memory]) -> None:
        """Append all rows in one commit, so a killed writer leaves all of them or none."""
        import pyarrow as pa

        rows: dict[str, list] = {name: [] for name in _schema().names}
        now = time.time()
        with tempfile.TemporaryDirectory(prefix="icae-rag-lance-") as tmp:
            for key, memory in zip(keys, memories, strict=True):
                path = Path(tmp) / "memory.safetensors"
                memory.save(path)
                for col, value in zip(KEY_COLUMNS, key._row(), strict=True):
                    rows[col].append(value)
                rows["row_id"].append(uuid.uuid4().hex)
                rows["memory"].append(path.read_bytes())
                rows["soft_tokens"].append(memory.num_positions)
                rows["source_tokens"].append(memory.source_tokens)
                rows["created"].append(now)
        self._append(pa.Table.from_pydict(rows, schema=_schema()))
        with self._lock:
            self._stats.writes += len(keys)

    def _delete_rows(self, row_ids: Sequence[str]) -> None:
        ds = self._dataset()
        for i in range(0, len(row_ids), IN_CHUNK):
            # Lance retries a delete that races with other commits (conflict_retries).
            ds.delete(f"row_id IN ({', '.join(_quote(r) for r in row_ids[i:i + IN_CHUNK])})")

    def _identities_of(self, shas: Sequence[str]) -> set[tuple[str, str, str]]:
        """The (kind, version, backbone) of every compressor with entries for these text hashes."""
        rows = self._rows(None, shas, list(KEY_COLUMNS[1:]))
        return {(r["compressor"], r["version"], r["backbone"]) for r in rows}

    # --- maintenance ----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of distinct keys, of every compressor version (duplicate rows counted once)."""
        ds = self._dataset()
        if ds is None:
            return 0
        table = ds.to_table(columns=list(KEY_COLUMNS))
        return len(set(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS), strict=True)))

    def row_count(self) -> int:
        """Number of rows, duplicates included (equals `len(self)` after `compact`)."""
        ds = self._dataset()
        return 0 if ds is None else ds.count_rows()

    def compact(self) -> int:
        """Delete duplicate rows (the oldest row of each key stays), compact the files, index the text hash.

        Returns the number of rows deleted. Run it when writers are done (it is safe while they
        write, but their newer duplicates stay until the next run).
        """
        ds = self._dataset()
        if ds is None:
            return 0
        table = ds.to_table(columns=[*KEY_COLUMNS, "row_id", "created"])
        rows = sorted(table.to_pylist(), key=lambda r: (r["created"], r["row_id"]))
        seen: set[tuple[str, ...]] = set()
        extra: list[str] = []
        for row in rows:
            key = tuple(row[c] for c in KEY_COLUMNS)
            if key in seen:
                extra.append(row["row_id"])
            seen.add(key)
        if extra:
            self._delete_rows(extra)
        ds = self._dataset()
        ds.optimize.compact_files()
        # Lookups filter on the text hash: a B-tree index spares them a scan of the whole column
        # (rows appended later are scanned until the next compact; Lance merges both).
        ds.create_scalar_index("text_sha256", "BTREE", replace=True)
        return len(extra)

    @property
    def stats(self) -> StoreStats:
        """Hits, misses and writes of this object since it was opened (a copy)."""
        with self._lock:
            return StoreStats(**vars(self._stats))

    def close(self) -> None:
        """Nothing to release: every operation opens the table's newest version (idempotent)."""

    def __repr__(self) -> str:
        return f"LanceMemoryStore({self.path!r})"

