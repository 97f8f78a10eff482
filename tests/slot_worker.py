"""A stand-in compressor and a writer/reader process for the SqliteMemoryStore crash and concurrency tests.

Run as ``python tests/slot_worker.py write|read STORE_DIR N ROWS``: `write` stores N entries one at
a time (printing a line after each), `read` polls until all N are served, checking each hit bit for
bit, and prints how many it saw.
"""

from __future__ import annotations

import hashlib
import sys
import time
from types import SimpleNamespace

import torch

from icae_rag.memories.soft_prompt import Piece, SoftPrompt, text_sha256
from icae_rag.stores import SqliteMemoryStore


def expected(text: str, rows: int) -> SoftPrompt:
    """The deterministic 'compression' of a text: (rows, 64) seeded by the text."""
    g = torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
    emb = torch.randn(rows, 64, generator=g)
    return SoftPrompt(emb, (Piece(text_sha256(text), 0, 4 * rows, 0, rows),), "fake", "fake-1", "fake@0")


class FakeCompressor:
    """Just what SqliteMemoryStore uses of a compressor: identity, decoder device, compress_many."""

    kind, version, backbone_id = "fake", "fake-1", "fake@0"
    decoder = SimpleNamespace(device=torch.device("cpu"))

    def __init__(self, rows: int = 8) -> None:
        self.rows = rows
        self.calls: list[int] = []

    def compress_many(self, texts, *, batch_size: int = 8, progress: bool = False) -> list[SoftPrompt]:
        self.calls.append(len(texts))
        return [expected(t, self.rows) for t in texts]


def texts(n: int) -> list[str]:
    """The texts both processes agree on."""
    return [f"text number {i}" for i in range(n)]


def main(mode: str, path: str, n: int, rows: int) -> None:
    comp = FakeCompressor(rows)
    with SqliteMemoryStore(path) as store:
        if mode == "write":
            for t in texts(n):
                store.get_or_compress([t], comp)
                print("wrote", flush=True)
            return
        seen: set[str] = set()
        deadline = time.time() + 60
        while len(seen) < n and time.time() < deadline:
            for t in texts(n):
                prompt = store.get(t, comp)
                if prompt is not None:
                    if not torch.equal(prompt.embeddings, expected(t, rows).embeddings):
                        raise SystemExit(f"garbage served for {t!r}")
                    seen.add(t)
        print(len(seen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
