"""`Memory`: what a compressor makes of a text, whatever its kind, and the file format they share.

Two kinds exist: `SoftPrompt` (rows in the decoder's input-embedding space: ICAE, E2LLM, raw) and
`KvMemory` (kept per-layer keys and values of the decoder itself: kvzip). Both are one safetensors
file whose JSON header (`"icae_rag"` metadata) names the kind, so `Memory.load` reads either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import CorruptFileError
from ..io import read_tensor_bytes, read_tensors


class Memory:
    """Base of every compressed-text kind: provenance, sizes, and file loading by kind."""

    format_name: ClassVar[str] = ""
    # The decoder's own states (KV memories) can be read by any compressor on the same decoder.
    readable_by_any_compressor: ClassVar[bool] = False
    _formats: ClassVar[dict[str, type[Memory]]] = {}

    # Set by every subclass (dataclass fields): where the memory came from.
    pieces: tuple
    compressor: str
    compressor_version: str
    backbone: str
    metadata: dict[str, str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.format_name:
            Memory._formats[cls.format_name] = cls

    @property
    def num_positions(self) -> int:
        """Decoder positions (or, for KV memories, position-equivalents of cache) this memory takes."""
        raise NotImplementedError

    @property
    def source_tokens(self) -> int:
        """Number of decoder tokens of raw text this memory replaces."""
        return sum(p.source_tokens for p in self.pieces)

    @property
    def compression_ratio(self) -> float:
        """Source tokens per decoder position the memory takes."""
        return self.source_tokens / max(1, self.num_positions)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the memory stores, by name (what its file holds)."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write the memory as one safetensors file (atomic)."""
        raise NotImplementedError

    def file_header(self, format_version: int) -> dict[str, Any]:
        """The provenance every memory file's JSON header holds; kinds add their own fields."""
        return {"format": self.format_name, "format_version": format_version, "compressor": self.compressor,
                "compressor_version": self.compressor_version, "backbone": self.backbone,
                "pieces": [list(vars(p).values()) for p in self.pieces], "metadata": self.metadata}

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Memory:
        """Read a file written by `save`; a truncated, edited or foreign file raises CorruptFileError."""
        return cls._from_tensors(*read_tensors(path), Path(path), device)

    @classmethod
    def from_bytes(cls, data: bytes, name: str, device: str | torch.device = "cpu") -> Memory:
        """Read the content of a file written by `save` (e.g. a store's table cell), without a file;
        `name` says where it came from in errors."""
        return cls._from_tensors(*read_tensor_bytes(data, name), Path(name), device)

    @classmethod
    def _from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path,
                      device: str | torch.device) -> Memory:
        try:
            header = json.loads(meta["icae_rag"])
            # Files from before KV memories existed carry no format name: they are soft prompts.
            kind = Memory._formats[header.get("format", "soft_prompt")]
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(
                f"{Path(path)} is a safetensors file but not an icae_rag memory (soft prompt or KV memory) ({e!r}): "
                "create it with `icae-rag compress` or Memory.save") from e
        if not issubclass(kind, cls):
            raise CorruptFileError(f"{Path(path)} holds a {kind.__name__}, not a {cls.__name__}: "
                                   f"read it with Memory.load")
        return kind.from_file(tensors, header, Path(path), device)

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], header: dict[str, Any], path: Path,
                  device: str | torch.device) -> Memory:
        """Build the memory from a file's tensors and parsed header (called by `load`)."""
        raise NotImplementedError
