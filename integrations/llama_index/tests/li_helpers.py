"""Shared pieces of the LlamaIndex tests: sample nodes, a compress_many spy, an event collector, a gated stream."""

from __future__ import annotations

import threading

from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from benchmarks.llamaindex_rag import EventCollector
from conftest import TEXT, spy_compress

__all__ = ["TEXTS", "EventCollector", "GatedStream", "make_nodes", "spy_compress"]

TEXTS = [
    "Apollo 11 landed on the Moon in July 1969 with two astronauts aboard.",
    "Neil Armstrong was the first person to walk on the lunar surface.",
    "The lunar module was called Eagle and the command module Columbia.",
    TEXT,
]
SCORES = [0.2, 0.9, None, 0.5]


def make_nodes() -> list[NodeWithScore]:
    """Four scored nodes (one without a score) with metadata, hidden keys and a source relationship."""
    return [
        NodeWithScore(node=TextNode(
            text=text, id_=f"n{i}", metadata={"file": f"doc{i}.txt", "page": i},
            excluded_llm_metadata_keys=["page"],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i}")}), score=score)
        for i, (text, score) in enumerate(zip(TEXTS, SCORES, strict=True))
    ]




class GatedStream:
    """Holds `compressor.stream`'s decoding after its first piece until `release()` (or `wait` seconds).

    A consumer that gets the first piece while `finished` is not set was handed it while decoding
    was still going on: streamed, not collected at the end. Without streaming the first piece only
    arrives after the wait times out and decoding finished, so the check fails (no clock involved).
    """

    def __init__(self, compressor, monkeypatch, wait: float = 30.0) -> None:
        self.released, self.finished = threading.Event(), threading.Event()
        original = compressor.stream

        def gated(*args, **kwargs):
            try:
                for i, piece in enumerate(original(*args, **kwargs)):
                    yield piece
                    if i == 0:
                        self.released.wait(wait)
            finally:
                self.finished.set()

        monkeypatch.setattr(compressor, "stream", gated)

    def first_piece_while_decoding(self, pieces) -> str:
        """The first piece of the iterator `pieces`; asserts decoding had not finished, then releases it."""
        first = next(pieces)
        still_decoding = not self.finished.is_set()
        self.release()
        assert still_decoding, "the first piece arrived only after decoding finished: not streamed"
        return first

    def release(self) -> None:
        self.released.set()
