"""`open_store`: a memory store by URI, a local `SqliteMemoryStore` directory or a `LanceMemoryStore` table.

The interface both implement is `icae_rag.stores.base.MemoryStore`; this module is apart from it
so that the implementations import the interface and only this module imports them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InvalidInputError
from .base import LANCE_PREFIX, MemoryStore, StoreStats
from .lance import LanceMemoryStore
from .sqlite import SqliteMemoryStore

__all__ = ["MemoryStore", "StoreStats", "as_store", "is_lance_uri", "open_store"]

LANCE_SUFFIX = ".lance"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_lance_uri(uri: str | os.PathLike) -> bool:
    """Whether `open_store` opens `uri` as a Lance table (see `open_store`)."""
    text = os.fspath(uri)
    if text.startswith(LANCE_PREFIX) or text.rstrip("/").endswith(LANCE_SUFFIX):
        return True
    if _SCHEME.match(text):
        return True
    return (Path(text).expanduser() / "_versions").is_dir()  # an existing Lance table, whatever its name


def open_store(uri: str | os.PathLike, *, storage_options: dict[str, str] | None = None) -> MemoryStore:
    """Open (or create) the memory store at `uri`.

    - ``lance://<path or URI>`` (e.g. ``lance:///data/mem``, ``lance://s3://bucket/mem``), any path
      ending in ``.lance``, any object-store URI (``s3://``, ``gs://``, ``az://``, ...) or an
      existing Lance table: a `LanceMemoryStore`; `storage_options` go to Lance as they are.
    - any other path: a `SqliteMemoryStore` directory (the local default).
    """
    if not isinstance(uri, (str, os.PathLike)):
        raise InvalidInputError(f"a store URI must be a path or a string, got {type(uri).__name__}")
    if is_lance_uri(uri):
        return LanceMemoryStore(os.fspath(uri), storage_options=storage_options)
    if storage_options:
        raise InvalidInputError(f"{os.fspath(uri)!r} opens a local SqliteMemoryStore, which takes no storage_options: "
                                "name a Lance table (a .lance path, lance://... or an object-store URI)")
    return SqliteMemoryStore(uri)


def as_store(store: MemoryStore | str | os.PathLike | None) -> MemoryStore | None:
    """`store` as is if it is a MemoryStore (or None), else `open_store(store)`."""
    if store is None or isinstance(store, MemoryStore):
        return store
    if not isinstance(store, (str, os.PathLike)):
        raise InvalidInputError(f"store must be a SqliteMemoryStore, a LanceMemoryStore, a directory path or a store URI, "
                                f"got {type(store).__name__}")
    return open_store(store)
