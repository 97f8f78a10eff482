"""Memory stores: persistent caches of memories, keyed by text and compressor.

- `base`: `MemoryStore`, the one interface, and `MemoryKey`, what a memory is stored under.
- `sqlite`: `SqliteMemoryStore`, a local directory (SQLite index + one safetensors file per memory).
- `lance`: `LanceMemoryStore`, one Lance table, local or on an object store.
- `open`: `open_store(uri)` / `as_store(...)`, which pick one of them.
"""

from .base import MemoryKey, MemoryStore, StoreStats, compressor_identity
from .lance import LanceMemoryStore
from .open import as_store, is_lance_uri, open_store
from .sqlite import SqliteMemoryStore

__all__ = [
    "LanceMemoryStore",
    "MemoryKey",
    "MemoryStore",
    "SqliteMemoryStore",
    "StoreStats",
    "as_store",
    "compressor_identity",
    "is_lance_uri",
    "open_store",
]
