"""`SoftPromptCompressor`: a node postprocessor that turns retrieved nodes into soft prompts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ._shared import RAW, SoftPromptComponent, mark, node_text

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)


class SoftPromptCompressEndEvent(BaseEvent):
    """Emitted by `SoftPromptCompressor` once per call: what the context costs the decoder now."""

    nodes_in: int
    soft_nodes: int
    raw_nodes: int
    dropped_nodes: int
    soft_tokens: int
    source_tokens: int
    compressed: int
    seconds: float

    @classmethod
    def class_name(cls) -> str:
        return "SoftPromptCompressEndEvent"


@dataclass
class _Item:
    """A usable input node: its position, the text the decoder reads, and whether the budget keeps it raw."""

    index: int
    text: str
    raw: bool


@dataclass
class _Decision:
    """What the decoder reads for a kept node: its slot key or "raw", positions, source tokens."""

    slot: str
    positions: int
    source_tokens: int


class SoftPromptCompressor(SoftPromptComponent, BaseNodePostprocessor):
    """Turns retrieved nodes into ICAE / E2LLM soft prompts, taking them from the slot store when present.

    One output node per input node (none are merged or split; see the drops below), in the input
    order, each a new `NodeWithScore` with the same id, score, text, metadata and relationships;
    the caller's nodes are not modified. The soft prompt itself is not put in the node:
    its slot key goes into the metadata key ``icae_rag_slot_key`` (hidden from the LLM and the
    embedder), and `SoftPromptSynthesizer` looks the prompt up by that key. Nodes the budget keeps
    as raw text are marked ``"raw"``. Pass the same `Compressor` object to both (or use
    `build_query_engine`).

    Compression does not depend on the query, so `query_bundle` may be None.

    Budget:
        keep_top_raw: the n highest-scored nodes (nodes without a score rank last; ties keep their
            order) stay raw text, the rest are compressed.
        max_soft_tokens: cap on the decoder positions the context takes per query (soft tokens of
            compressed nodes plus tokens of raw ones). Nodes are taken best first; a raw node that
            does not fit is compressed instead, a compressed node that does not fit is dropped
            (logged at INFO, counted in `SoftPromptCompressEndEvent`).

    Fallbacks (logged warnings): a node with empty text is dropped; a node carrying an image, audio
    or video is kept with its text only.

    Example::

        compressor = load_compressor("kvzip")
        post = SoftPromptCompressor(compressor, SlotStore.in_persist_dir("./storage"), keep_top_raw=1)
        nodes = post.postprocess_nodes(retriever.retrieve("Who ...?"))
    """

    keep_top_raw: int = Field(default=0, ge=0, description="Highest-scored nodes kept as raw text.")
    max_soft_tokens: int | None = Field(
        default=None, gt=0, description="Cap on context decoder positions per query; None: no cap.")

    @classmethod
    def class_name(cls) -> str:
        return "SoftPromptCompressor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        start = time.perf_counter()
        items = self._plan(nodes)
        return self._finish(nodes, *self._decide(items), start)

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        start = time.perf_counter()
        items = self._plan(nodes)
        # Compression is CPU/GPU bound: run it off the event loop, serialised by the compressor lock.
        decisions, compressed = await asyncio.to_thread(self._decide, items)
        return self._finish(nodes, decisions, compressed, start)

    def _plan(self, nodes: Sequence[NodeWithScore]) -> list[_Item]:
        """Usable nodes, best first, with the ones the budget keeps raw."""
        texts = [(i, node_text(n.node)) for i, n in enumerate(nodes)]
        usable = [(i, t) for i, t in texts if t is not None]
        # sorted() is stable: equal scores keep the retriever's order; nodes without a score go last.
        ranked = sorted(usable, key=lambda it: (nodes[it[0]].score is None, -(nodes[it[0]].score or 0.0)))
        return [_Item(i, t, rank < self.keep_top_raw) for rank, (i, t) in enumerate(ranked)]

    def _decide(self, items: list[_Item]) -> tuple[dict[int, _Decision], int]:
        """Per input index, what the decoder reads; and how many texts were compressed just now."""
        cache, cap = self._cache, self.max_soft_tokens
        soft_items = [it for it in items if not it.raw]
        resolved = cache.resolve([it.text for it in soft_items], batch_size=self.batch_size)
        compressed = resolved.compressed
        soft = {it.index: (p, k) for it, p, k in zip(soft_items, resolved.prompts, resolved.keys, strict=True)}
        decisions: dict[int, _Decision] = {}
        used = 0
        for it in items:
            if it.raw:
                n = cache.count_tokens(it.text)
                if cap is None or used + n <= cap:
                    decisions[it.index] = _Decision(RAW, n, n)
                    used += n
                    continue
                logger.info("node %d: %d raw tokens exceed the remaining budget; compressing it instead", it.index, n)
                one = cache.resolve([it.text], batch_size=self.batch_size)
                compressed += one.compressed
                soft[it.index] = (one.prompts[0], one.keys[0])
            prompt, key = soft[it.index]
            if cap is None or used + prompt.num_soft_tokens <= cap:
                decisions[it.index] = _Decision(str(key), prompt.num_soft_tokens, prompt.source_tokens)
                used += prompt.num_soft_tokens
            else:
                logger.info("node %d: %d soft tokens exceed the remaining budget of %d; dropped",
                            it.index, prompt.num_soft_tokens, cap - used)
        if items and not decisions:
            logger.warning("max_soft_tokens=%s is smaller than every node's soft prompt: no context is left", cap)
        return decisions, compressed

    def _finish(self, nodes: Sequence[NodeWithScore], decisions: dict[int, _Decision], compressed: int,
                start: float) -> list[NodeWithScore]:
        out = [NodeWithScore(node=mark(nodes[i].node, decisions[i].slot), score=nodes[i].score)
               for i in sorted(decisions)]
        kept = list(decisions.values())
        dispatcher.event(SoftPromptCompressEndEvent(
            nodes_in=len(nodes),
            soft_nodes=sum(d.slot != RAW for d in kept),
            raw_nodes=sum(d.slot == RAW for d in kept),
            dropped_nodes=len(nodes) - len(kept),
            soft_tokens=sum(d.positions for d in kept),
            source_tokens=sum(d.source_tokens for d in kept),
            compressed=compressed,
            seconds=time.perf_counter() - start,
        ))
        return out
