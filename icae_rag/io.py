"""Safe, atomic file I/O: JSON and safetensors only, written to a temp file then renamed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CorruptFileError, MissingFileError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as sorted, indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with typed errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}): restore or re-create it") from e


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically (contiguous CPU copies, shared storage broken)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and its string metadata; never unpickles anything. The tensors are
    views of the memory-mapped file (nothing is copied until written to or moved)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: check the path")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({e}): it may be truncated or "
            "corrupted; re-create it"
        ) from e
    return tensors, metadata


def read_tensor_bytes(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read safetensors bytes (a file's content held elsewhere, e.g. a table cell) and their string
    metadata; `name` says where they came from in errors. Never unpickles anything."""
    from safetensors.torch import load

    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size]) if len(data) >= 8 + size else None
        if not isinstance(header, dict):
            raise ValueError(f"a safetensors header of {size} bytes does not fit in {len(data)} bytes")
        tensors = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{name} is not readable safetensors ({e}): it may be truncated or corrupted; "
                               "re-create it") from e
    return tensors, {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
