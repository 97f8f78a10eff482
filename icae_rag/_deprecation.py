"""Deprecated names kept for one release after a rename: a DeprecationWarning, then the new name.

- `renamed(old, new)`: warn that `old` is now `new` (methods and properties call it, then forward).
- `class_aliases(module_name, {old: new_class})`: a module `__getattr__` that returns `new_class`
  for `old`, with a warning (`from module import Old` warns; `Old is New`).
- `renamed_kwarg(data, old, new, owner)`: move an old constructor keyword to its new name, with a warning.

The project itself uses none of the old names (tests/test_deprecations.py checks it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, MutableMapping
from typing import Any


def renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that `old` is deprecated in favour of `new` (stacklevel 3: the caller's caller)."""
    warnings.warn(f"{old} is deprecated: use {new} instead (the alias is removed in the next release)",
                  DeprecationWarning, stacklevel=stacklevel)


def class_aliases(module_name: str, aliases: dict[str, Callable[[], Any]]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving each old class name to its new class, with a warning.

    `aliases` maps an old name to a zero-argument function returning the new object (lazy, so the
    alias costs no import).
    """

    def __getattr__(name: str) -> Any:
        if name in aliases:
            new = aliases[name]()
            renamed(f"{module_name}.{name}", f"{new.__module__}.{new.__qualname__}")
            return new
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


def renamed_kwarg(data: MutableMapping[str, Any], old: str, new: str, owner: str, *, stacklevel: int = 4) -> None:
    """Move keyword `old` to `new` in `data` (constructor keywords), warning; both given is an error.

    `stacklevel` 4 points the warning at whoever called the constructor that calls this."""
    if old in data:
        if new in data:
            raise TypeError(f"{owner}: pass {new}= only ({old}= is its deprecated name)")
        renamed(f"{owner}({old}=...)", f"{new}=...", stacklevel=stacklevel)
        data[new] = data.pop(old)
