"""What the deprecated alias modules share: name lookups forwarded to the modules that replace them.

An old module path (e.g. `icae_rag.datasets`) stays importable for one release as a thin module that
warns at import, star-imports its replacement's public names and ends with
``__getattr__ = forward(...)``, so any other name (constants, private helpers) still resolves. A
name set through the alias (monkeypatching) does not reach the new module: patch the new path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# Old module -> the module(s) replacing it; the project itself imports only the new paths
# (tests/test_imports.py checks it).
ALIASES: dict[str, tuple[str, ...]] = {
    "icae_rag.distributed": ("icae_rag.indexing",),
}


def forward(old: str) -> Callable[[str], Any]:
    """A module `__getattr__` for the alias `old`: a name is looked up in its new modules, in order."""

    def __getattr__(name: str) -> Any:
        for new in ALIASES[old]:
            module = importlib.import_module(new)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
