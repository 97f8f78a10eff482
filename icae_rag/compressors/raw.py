"""The raw-text baseline: its memory is a soft prompt of the text's own token embeddings (ratio 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.backbones import DEFAULT_DECODER, DecoderBackbone
from .base import Compressor, Encoded


@dataclass
class RawConfig:
    """The raw baseline only needs to know its decoder."""

    decoder: str = DEFAULT_DECODER


class RawTextCompressor(Compressor):
    """No compression: what the decoder reads is exactly the text's tokens."""

    kind = "raw"
    config_class = RawConfig
    reads_text = True

    def __init__(self, config: RawConfig, decoder: DecoderBackbone) -> None:
        super().__init__(config, decoder)
        self.trained = True  # nothing to train: the baseline is always what it claims to be

    @property
    def version(self) -> str:
        """Token embeddings only depend on the backbone."""
        return "raw-1"

    def encode(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False) -> list[Encoded]:
        """Token embeddings of each text, one piece per text."""
        out: list[Encoded] = []
        for text in texts:
            ids = self.tokenize(text)
            out.append((self.decoder.embed_ids(torch.tensor(ids, dtype=torch.long)), [(0, len(ids), len(ids))]))
        return out
