"""Shared pieces of the LlamaIndex tests: sample nodes, a compress_many spy, an event collector."""

from __future__ import annotations

from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from benchmarks.llamaindex_rag import EventCollector
from conftest import TEXT, spy_compress

__all__ = ["TEXTS", "EventCollector", "make_nodes", "spy_compress"]

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


