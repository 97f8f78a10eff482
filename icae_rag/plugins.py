"""The compressor registry and the entry-point groups that plugins declare kinds and data sets in (no torch).

Two groups, read with `importlib.metadata` (a distribution declares them in its pyproject.toml):

- ``icae_rag.compressors``: name = the kind, value = ``"package.module:CompressorClass"``, a
  `Compressor` subclass whose class attribute `config_class` is its config dataclass. Listing the
  kinds reads only the names (`icae-rag --help` imports no torch); the module is imported the first
  time the kind is used (`get_compressor_class`, `load_compressor`, `compressor_kinds` with a trait).
- ``icae_rag.datasets``: name = the data set, value = ``"package.module:obj"``, a `Dataset` or a
  callable taking no argument that returns one (or registers it with `register_dataset`); read by
  `icae_rag.data.registry` on its first lookup.

The built-in kinds are `BUILTIN_COMPRESSORS`, declared with the same values in icae-rag's own
pyproject.toml: an install whose metadata predates them, or a source tree on PYTHONPATH, finds them
all the same. An installed entry point cannot replace a built-in kind.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import warnings
from typing import TYPE_CHECKING, Any

from .errors import PluginError, UnknownCompressorError

if TYPE_CHECKING:
    from .compressors.base import Compressor

__all__ = [
    "BUILTIN_COMPRESSORS",
    "COMPRESSOR_GROUP",
    "DATASET_GROUP",
    "compressor_entry_points",
    "compressor_kinds",
    "entry_points",
    "get_compressor_class",
    "register_compressor",
    "unregister_compressor",
]

COMPRESSOR_GROUP = "icae_rag.compressors"
DATASET_GROUP = "icae_rag.datasets"
BUILTIN_COMPRESSORS = {
    "e2llm": "icae_rag.compressors.e2llm:E2llmCompressor",
    "icae": "icae_rag.compressors.icae:IcaeCompressor",
    "kvzip": "icae_rag.compressors.kvzip:KvzipCompressor",
    "raw": "icae_rag.compressors.raw:RawTextCompressor",
}
# kind -> (config dataclass, compressor class): the kinds loaded or registered in this process.
_REGISTRY: dict[str, tuple[type, type[Compressor]]] = {}


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of `group` by name, read now; of two with one name the first wins."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        first = found.setdefault(ep.name, ep)
        if first.value != ep.value:
            warnings.warn(f"two installed packages declare {ep.name!r} in the entry-point group {group}: "
                          f"using {first.value!r}, ignoring {ep.value!r}", stacklevel=2)
    return found


def compressor_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Every declared kind: the built-ins, then the installed `icae_rag.compressors` entry points."""
    declared = {kind: importlib.metadata.EntryPoint(kind, value, COMPRESSOR_GROUP)
                for kind, value in BUILTIN_COMPRESSORS.items()}
    for kind, ep in entry_points(COMPRESSOR_GROUP).items():
        if kind in declared and ep.value != declared[kind].value:
            warnings.warn(f"an installed package declares the built-in compressor kind {kind!r} as "
                          f"{ep.value!r}: ignored, the built-in is used", stacklevel=2)
        declared.setdefault(kind, ep)
    return declared


def register_compressor(kind: str, config_cls: type, compressor_cls: type[Compressor]) -> None:
    """Register a (config dataclass, compressor class) pair under a lowercase name, at run time."""
    if not kind or kind != kind.lower() or kind in _REGISTRY:
        raise ValueError(f"compressor kind {kind!r} must be lowercase and registered only once")
    _REGISTRY[kind] = (config_cls, compressor_cls)
    compressor_cls.kind = kind
    compressor_cls.config_class = config_cls


def unregister_compressor(kind: str) -> None:
    """Undo `register_compressor(kind)`. A kind an entry point declares (the built-ins too) stays
    listed, and its entry point is loaded again the next time it is used."""
    if kind not in _REGISTRY:
        raise UnknownCompressorError(f"compressor kind {kind!r} is not registered: registered are {sorted(_REGISTRY)}")
    del _REGISTRY[kind]


def compressor_kinds(*, reads_text: bool | None = None, trainable: bool | None = None) -> list[str]:
    """Names of the compressor kinds, read now: registered or declared by an entry point. Without a
    trait no plugin module is imported; asking for a trait loads every declared kind to read it (a
    kind whose plugin fails to load is left out, with a warning)."""
    declared = compressor_entry_points()
    if reads_text is None and trainable is None:
        return sorted(set(_REGISTRY) | set(declared))
    for kind, ep in declared.items():
        if kind not in _REGISTRY:
            try:
                _load_compressor(kind, ep)
            except PluginError as e:
                warnings.warn(f"{e}; the kind is left out", stacklevel=2)
    return sorted(kind for kind, (_, cls) in _REGISTRY.items()
                  if reads_text in (None, cls.reads_text) and trainable in (None, cls.trainable))


def get_compressor_class(kind: str) -> tuple[type, type[Compressor]]:
    """(config class, compressor class) of a kind; a declared kind's module is imported on first use."""
    if kind not in _REGISTRY:
        ep = compressor_entry_points().get(kind)
        if ep is None:
            raise UnknownCompressorError(f"unknown compressor {kind!r}: choose one of {compressor_kinds()}")
        _load_compressor(kind, ep)
    return _REGISTRY[kind]


def _load_compressor(kind: str, ep: importlib.metadata.EntryPoint) -> None:
    where = f"the compressor kind {kind!r} (entry point {kind} = {ep.value!r} in group {COMPRESSOR_GROUP})"
    try:
        obj: Any = ep.load()
    except Exception as e:  # a plugin's import can fail any way; name the plugin and the cause
        raise PluginError(f"{where} could not be imported: {type(e).__name__}: {e}") from e
    if kind in _REGISTRY:  # its module registered the kind itself when imported
        return
    config_cls = getattr(obj, "config_class", None)
    if not (isinstance(obj, type) and callable(getattr(obj, "build", None))
            and isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise PluginError(f"{where} must name a Compressor subclass whose class attribute `config_class` "
                          f"is its config dataclass, got {obj!r}")
    register_compressor(kind, config_cls, obj)
