"""What the deprecated alias modules share: a warning at import, then names forwarded to the new modules.

An old module path (e.g. `icae_rag.slot_store`) stays importable for one release as a thin module
that star-imports its replacement's public names and ends with ``__getattr__ = deprecated(__name__)``:
importing it warns (DeprecationWarning, pointing at the importer), and any other name (constants,
private helpers) is looked up in the new modules. A name set through the alias (monkeypatching)
does not reach the new module: patch the new path.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

# Old module -> (the path to import instead, the modules its names now live in). The project itself
# imports only the new paths (tests/test_imports.py checks it).
ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "icae_rag.chunking": ("icae_rag.data.chunking", ("icae_rag.data.chunking",)),
    "icae_rag.datasets": ("icae_rag.data", ("icae_rag.data.registry", "icae_rag.data.readers",
                                             "icae_rag.data.qa", "icae_rag.data.longqa")),
    "icae_rag.distributed": ("icae_rag.indexing", ("icae_rag.indexing",)),
    "icae_rag.generation": ("icae_rag.decoding", ("icae_rag.decoding.prompts", "icae_rag.decoding.prefill",
                                                   "icae_rag.decoding.generate")),
    "icae_rag.lance_store": ("icae_rag.stores", ("icae_rag.stores.lance",)),
    "icae_rag.memory_store": ("icae_rag.stores", ("icae_rag.stores.base",)),
    "icae_rag.retrieval": ("icae_rag.data.retrieval", ("icae_rag.data.retrieval",)),
    "icae_rag.slot_store": ("icae_rag.stores", ("icae_rag.stores.sqlite",)),
}


def deprecated(old: str) -> Callable[[str], Any]:
    """Warn that the module `old` is deprecated; return its `__getattr__`, which forwards names."""
    instead, modules = ALIASES[old]
    # stacklevel 3: past this function and the alias module, to the line that imported the alias.
    warnings.warn(f"{old} is deprecated: import {instead} instead (the alias is removed in the next "
                  "release)", DeprecationWarning, stacklevel=3)

    def __getattr__(name: str) -> Any:
        if name == "__all__":  # what `from <alias> import *` takes: the new modules' public names
            return sorted({n for new in modules for n in _public(importlib.import_module(new))})
        for new in modules:
            module = importlib.import_module(new)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__


def _public(module: Any) -> list[str]:
    return list(getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]))
