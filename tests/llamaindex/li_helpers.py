"""Shared pieces of the LlamaIndex tests: sample nodes, a compress_many spy, an event collector."""

from __future__ import annotations

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from conftest import TEXT

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


def spy_compress(compressor, monkeypatch) -> list[int]:
    """Record the number of texts of every compress_many call on this compressor object."""
    calls: list[int] = []
    original = compressor.compress_many

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(compressor, "compress_many", counting)
    return calls


class EventCollector(BaseEventHandler):
    """Keeps the instrumentation events of one class while installed on the root dispatcher."""

    kind: type
    events: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventCollector"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, self.kind):
            self.events.append(event)

    def __enter__(self) -> EventCollector:
        get_dispatcher().add_event_handler(self)
        return self

    def __exit__(self, *exc) -> None:
        get_dispatcher().event_handlers.remove(self)
