"""`SoftPrompt`: soft tokens in a decoder's input-embedding space, with their provenance."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import BackboneMismatchError, CorruptFileError, InvalidInputError
from ..io import write_tensors
from .base import Memory

FORMAT_VERSION = 1


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes: the key that ties a memory to its source."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, init=False)
class Piece:
    """One compressed piece: source tokens [token_start, token_end) of the text became the memory's
    context positions [position_start, position_end).

    In a soft prompt those are rows of its embeddings, one decoder position each. In a KV memory
    they are the passage positions its kept entries carry (each (layer, head) keeps a subset).
    Memory files store a piece as the list of these five fields in this order; 0.1 named the last
    two ``slot_start`` / ``slot_end`` (same values), so its files load unchanged.
    """

    source_sha256: str
    token_start: int
    token_end: int
    position_start: int
    position_end: int

    def __init__(self, source_sha256: str, token_start: int, token_end: int, position_start: int | None = None,
                 position_end: int | None = None, *, slot_start: int | None = None,
                 slot_end: int | None = None) -> None:
        """The five fields in order; ``slot_start=`` / ``slot_end=`` are 0.1's keywords (deprecated)."""
        if slot_start is not None or slot_end is not None:
            warnings.warn("Piece(slot_start=, slot_end=) is deprecated, use position_start= / position_end= "
                          "(removed in 0.3)", DeprecationWarning, stacklevel=2)
            position_start = slot_start if position_start is None else position_start
            position_end = slot_end if position_end is None else position_end
        if position_start is None or position_end is None:
            raise TypeError("Piece needs position_start and position_end")
        # Frozen: set through object.__setattr__, in field order (a file stores them in this order).
        for name, value in (("source_sha256", source_sha256), ("token_start", token_start),
                            ("token_end", token_end), ("position_start", position_start),
                            ("position_end", position_end)):
            object.__setattr__(self, name, value)

    @property
    def source_tokens(self) -> int:
        """Number of decoder tokens of the source this piece stands for."""
        return self.token_end - self.token_start

    @property
    def slot_start(self) -> int:
        """Deprecated 0.1 name of `position_start`; removed in 0.3."""
        warnings.warn("Piece.slot_start is deprecated, use Piece.position_start (removed in 0.3)",
                      DeprecationWarning, stacklevel=2)
        return self.position_start

    @property
    def slot_end(self) -> int:
        """Deprecated 0.1 name of `position_end`; removed in 0.3."""
        warnings.warn("Piece.slot_end is deprecated, use Piece.position_end (removed in 0.3)",
                      DeprecationWarning, stacklevel=2)
        return self.position_end


@dataclass
class SoftPrompt(Memory):
    """Soft tokens ``embeddings`` (n, d_model) plus where each row came from.

    ``compressor`` is the kind ("icae", "e2llm", "raw"), ``compressor_version`` identifies the
    trained weights, ``backbone`` is "decoder-name@weights-fingerprint": a soft prompt is only
    meaningful to that decoder.
    """

    embeddings: torch.Tensor
    pieces: tuple[Piece, ...]
    compressor: str
    compressor_version: str
    backbone: str
    metadata: dict[str, str] = field(default_factory=dict)
    format_name = "soft_prompt"

    def __post_init__(self) -> None:
        if not isinstance(self.embeddings, torch.Tensor) or self.embeddings.dim() != 2:
            raise InvalidInputError("SoftPrompt.embeddings must be a 2-D tensor (n_soft_tokens, d_model)")
        self.pieces = tuple(self.pieces)
        covered = sum(p.position_end - p.position_start for p in self.pieces)
        if covered != self.embeddings.shape[0]:
            raise InvalidInputError(
                f"SoftPrompt pieces cover {covered} rows but embeddings has {self.embeddings.shape[0]}"
            )

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def num_positions(self) -> int:
        """Number of soft tokens (decoder input positions this prompt takes)."""
        return self.embeddings.shape[0]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SoftPrompt:
        """A copy on another device and/or dtype (provenance unchanged)."""
        return replace(self, embeddings=self.embeddings.to(device=device, dtype=dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the soft prompt stores, by name (what its file holds)."""
        return {"embeddings": self.embeddings}

    def piece_embeddings(self) -> list[torch.Tensor]:
        """The rows of each piece, in order."""
        return [self.embeddings[p.position_start : p.position_end] for p in self.pieces]

    @classmethod
    def concat(cls, prompts: Sequence[SoftPrompt]) -> SoftPrompt:
        """Join soft prompts of the same compressor and backbone into one, pieces in order."""
        if not prompts:
            raise InvalidInputError("SoftPrompt.concat needs at least one soft prompt")
        first = prompts[0]
        for p in prompts[1:]:
            if (p.compressor, p.compressor_version, p.backbone) != (
                first.compressor, first.compressor_version, first.backbone):
                raise BackboneMismatchError(
                    "cannot concatenate soft prompts from different compressors or backbones: "
                    f"{first.compressor}/{first.compressor_version}@{first.backbone} vs "
                    f"{p.compressor}/{p.compressor_version}@{p.backbone}"
                )
        pieces, offset = [], 0
        for p in prompts:
            pieces += [replace(q, position_start=q.position_start + offset,
                               position_end=q.position_end + offset) for q in p.pieces]
            offset += p.num_positions
        device = first.embeddings.device
        embeddings = torch.cat([p.embeddings.to(device) for p in prompts], dim=0)
        return cls(embeddings, tuple(pieces), first.compressor, first.compressor_version, first.backbone)

    def save(self, path: str | os.PathLike) -> None:
        """Write as one safetensors file; provenance goes in its JSON header metadata."""
        header = self.file_header(FORMAT_VERSION)
        write_tensors(path, {"embeddings": self.embeddings}, {"icae_rag": json.dumps(header)})

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], header: dict, path: Path,
                  device: str | torch.device) -> SoftPrompt:
        """Build a soft prompt from a file's tensors and header (see `Memory.load`)."""
        try:
            pieces = tuple(Piece(*row) for row in header["pieces"])
            prompt = cls(tensors["embeddings"].to(device), pieces, header["compressor"],
                         header["compressor_version"], header["backbone"], dict(header.get("metadata", {})))
        except (KeyError, TypeError, ValueError, InvalidInputError) as e:
            raise CorruptFileError(
                f"{path} is a safetensors file but not an icae_rag soft prompt ({e!r}): "
                "create it with `icae-rag compress` or SoftPrompt.save"
            ) from e
        if header["format_version"] > FORMAT_VERSION:
            raise CorruptFileError(f"{path} was written by a newer icae_rag: upgrade icae-rag")
        return prompt
