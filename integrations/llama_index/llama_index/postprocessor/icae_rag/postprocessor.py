"""`IcaeRagPostprocessor`: a node postprocessor that turns retrieved nodes into memories."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ._shared import RAW, IcaeRagComponent, mark, node_text, score_order

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)


class IcaeRagCompressEndEvent(BaseEvent):
    """Emitted by `IcaeRagPostprocessor` once per call: what the context costs the decoder now."""

    nodes_in: int
    memory_nodes: int
    raw_nodes: int
    dropped_nodes: int
    context_positions: int
    source_tokens: int
    compressed: int
    seconds: float

    @classmethod
    def class_name(cls) -> str:
        return "IcaeRagCompressEndEvent"


class IcaeRagPostprocessor(IcaeRagComponent, BaseNodePostprocessor):
    """Turns retrieved nodes into memories (from the memory store when present), one output node per input node.

    Output nodes are copies in input order; the memory's key goes into the metadata key
    ``icae_rag_slot_key`` (`MEMORY_KEY`) (hidden from the LLM and the embedder; ``"raw"`` for nodes kept as text),
    where `IcaeRagSynthesizer` looks it up: pass both the same `Compressor` object (or use
    `build_query_engine`). The query is not used, so `query_bundle` may be None.

    Budget: `keep_top_raw` highest-scored nodes stay raw text (unscored nodes rank last);
    `max_context_positions` caps the decoder positions of the context: taken best first, a raw node that
    does not fit is compressed instead, a memory that does not fit is dropped (INFO log, counted
    in `IcaeRagCompressEndEvent`). Nodes with empty text are dropped; media nodes keep their text.

    Example: ``IcaeRagPostprocessor(load_compressor("kvzip"), SqliteMemoryStore.in_persist_dir("./storage"))``.
    """

    keep_top_raw: int = Field(default=0, ge=0, description="Highest-scored nodes kept as raw text.")
    max_context_positions: int | None = Field(
        default=None, gt=0, description="Cap on context decoder positions per query; None: no cap.")

    @classmethod
    def class_name(cls) -> str:
        return "IcaeRagPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        return self._compress(nodes)

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        # Compression is CPU/GPU bound: run it off the event loop, serialised by the compressor lock.
        return await asyncio.to_thread(self._compress, nodes)

    def _compress(self, nodes: Sequence[NodeWithScore]) -> list[NodeWithScore]:
        """A marked copy of each kept node, in input order; emits one IcaeRagCompressEndEvent."""
        start = time.perf_counter()
        usable = [(i, text) for i, n in enumerate(nodes) if (text := node_text(n.node)) is not None]
        # Best first; sorted() stays stable when reversed: equal scores keep the retriever's order.
        ranked = sorted(usable, key=lambda it: score_order(nodes[it[0]]), reverse=True)
        fitted, compressed = self._cache.fit([t for _, t in ranked], keep_raw=self.keep_top_raw,
                                             max_positions=self.max_context_positions, batch_size=self.batch_size)
        kept = {i: f for (i, _), f in zip(ranked, fitted, strict=True) if f is not None}
        dispatcher.event(IcaeRagCompressEndEvent(
            nodes_in=len(nodes),
            memory_nodes=sum(f.key is not None for f in kept.values()),
            raw_nodes=sum(f.key is None for f in kept.values()),
            dropped_nodes=len(nodes) - len(kept),
            context_positions=sum(f.positions for f in kept.values()),
            source_tokens=sum(f.source_tokens for f in kept.values()),
            compressed=compressed,
            seconds=time.perf_counter() - start,
        ))
        return [NodeWithScore(node=mark(nodes[i].node, RAW if kept[i].key is None else str(kept[i].key)),
                              score=nodes[i].score) for i in sorted(kept)]
