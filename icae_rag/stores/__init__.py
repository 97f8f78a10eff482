"""Memory stores: persistent caches of memories, keyed by text and compressor.

- `base`: `MemoryStore`, the one interface, and `SlotKey`, what a memory is stored under.
- `sqlite`: `SlotStore`, a local directory (SQLite index + one safetensors file per memory).
- `lance`: `LanceMemoryStore`, one Lance table, local or on an object store.
- `open`: `open_store(uri)` / `as_store(...)`, which pick one of them.
"""

from .base import MemoryStore, SlotKey, SlotStats, compressor_identity
from .lance import LanceMemoryStore
from .open import as_store, is_lance_uri, open_store
from .sqlite import SlotStore

__all__ = [
    "LanceMemoryStore",
    "MemoryStore",
    "SlotKey",
    "SlotStats",
    "SlotStore",
    "as_store",
    "compressor_identity",
    "is_lance_uri",
    "open_store",
]
