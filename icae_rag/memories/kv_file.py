"""The file format of a `KvMemory`: one safetensors file, provenance and a checksum in its header.

The file holds the memory's tensors by name (`file_tensors`): keys, values, counts, and positions,
or for int4 / int2 memories a per-head position bitmap when that is smaller; int8 scales,
int4 / int2 quantisation tensors and kvzip's scores when present. Its `"icae_rag"` JSON header
holds what every memory file holds (`Memory.file_header`), the prompt prefix the keys follow and a
SHA-256 of the tensors: an edited or damaged file is refused on reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CorruptFileError
from ..io import write_tensors
from . import kv_quant
from .soft_prompt import Piece

if TYPE_CHECKING:
    from .kv_memory import KvMemory

FORMAT_VERSION = 1


def file_tensors(memory: KvMemory) -> dict[str, torch.Tensor]:
    """Every tensor the memory stores, by name (what its file holds)."""
    out = {"keys": memory.keys, "values": memory.values, "positions": memory.positions, "counts": memory.counts}
    if memory.quant is not None:
        out |= memory.quant
        bitmap_bytes = memory.counts.numel() * -(-memory.source_tokens // 8)
        if bitmap_bytes < memory.positions.numel() * memory.positions.element_size():
            del out["positions"]
            out["position_bits"] = kv_quant.positions_bitmap(memory.positions, memory.counts, memory.source_tokens)
    if memory.key_scale is not None:
        out |= {"key_scale": memory.key_scale, "value_scale": memory.value_scale}
    if memory.scores is not None:
        out["scores"] = memory.scores
    return out


def save(memory: KvMemory, path: str | os.PathLike) -> None:
    """Write `memory` as one safetensors file (atomic); provenance and a checksum go in its header."""
    tensors = {k: t.contiguous() for k, t in file_tensors(memory).items()}
    header = memory.file_header(FORMAT_VERSION) | {
        "prefix_tokens": memory.prefix_tokens, "prefix_sha256": memory.prefix_sha256, "sha256": _checksum(tensors)}
    write_tensors(path, tensors, {"icae_rag": json.dumps(header)})


def read(cls: type[KvMemory], tensors: dict[str, torch.Tensor], header: dict[str, Any], path: Path,
         device: str | torch.device) -> KvMemory:
    """A `cls` built from a file's tensors and parsed header; edits and inconsistencies raise
    CorruptFileError."""
    try:
        if header["format_version"] > FORMAT_VERSION:
            raise CorruptFileError(f"{path} was written by a newer icae_rag: upgrade icae-rag")
        if _checksum(tensors) != header["sha256"]:
            raise CorruptFileError(f"{path}: its tensors do not match the checksum in its header: "
                                   "the file was edited or damaged; compress the text again")
        positions = tensors.get("positions")
        if positions is None:
            positions, per_head = kv_quant.bitmap_positions(tensors["position_bits"])
            if not torch.equal(per_head, tensors["counts"].reshape(-1).long()):
                raise CorruptFileError(f"{path}: its position bitmap disagrees with its counts")
            pieces = tuple(Piece(*row) for row in header["pieces"])
            positions = positions.to(torch.int16 if sum(p.source_tokens for p in pieces) < 32768 else torch.int32)
        quant = {k: tensors[k] for k in kv_quant.QUANT_TENSORS} if "q_group" in tensors else None
        memory = cls(tensors["keys"], tensors["values"], positions, tensors["counts"],
                     tuple(Piece(*row) for row in header["pieces"]), int(header["prefix_tokens"]),
                     header["prefix_sha256"], header["compressor"], header["compressor_version"],
                     header["backbone"], tensors.get("key_scale"), tensors.get("value_scale"),
                     dict(header.get("metadata", {})), tensors.get("scores"), quant)
    except (KeyError, TypeError, ValueError) as e:  # InvalidInputError is a ValueError
        raise CorruptFileError(f"{path} is not a readable icae_rag KV memory ({e}): compress the text again") from e
    return memory if str(device) == "cpu" else memory.to(device)


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
