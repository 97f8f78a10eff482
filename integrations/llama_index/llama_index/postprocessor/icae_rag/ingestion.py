"""`IcaeRagIngestion`: compress nodes into the memory store as they are inserted into an index."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import BaseNode, MetadataMode, TransformComponent

from icae_rag.compressors.kvzip import budget_summary
from icae_rag.errors import InvalidInputError

from ._shared import IcaeRagComponent, node_text

logger = logging.getLogger(__name__)


class IcaeRagIngestion(IcaeRagComponent, TransformComponent):
    """An ingestion transformation that precomputes each node's memory into a memory store.

    Nodes are returned unchanged; their memories are keyed by the text the synthesizer reads, so
    later queries compress nothing. Put it last, after anything that changes node text or
    LLM-visible metadata (else queries compress again: correct, slower). An `IngestionPipeline`
    cache hit skips this step: point it at the same memory store as before.
    Example: ``transformations=[SentenceSplitter(), IcaeRagIngestion(compressor, store)]``.
    """

    needs_store = True
    store_uri: str = Field(description="Memory store directory or URI the memories are written to.")
    # Off by default: on the RAG bench it scored the same as nodes encoded apart at twice the index time.
    in_context: bool = Field(
        default=False, description="For kinds that use leads (kvzip): encode each node after the node before it in "
                                   "its document (its PREVIOUS relationship, when that node is in the same call).")

    @classmethod
    def class_name(cls) -> str:
        return "IcaeRagIngestion"

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Compress the nodes missing from the store; return the nodes unchanged."""
        kept = [(n, t) for n, t in ((n, node_text(n, quiet=True)) for n in nodes) if t is not None]
        if kept:
            leads = self._leads(nodes, [n for n, _ in kept]) if self.in_context and self.compressor.uses_leads else None
            texts = [t for _, t in kept]
            n = self._cache.precompute(texts, batch_size=self.batch_size, progress=bool(kwargs.get("show_progress")),
                                       leads=leads)
            logger.debug("precomputed %d of %d memories into %s", n, len(texts), self.store_uri)
        return nodes

    def budget_report(self, nodes: Sequence[BaseNode]) -> dict[str, Any]:
        """The distribution of the chosen ratios and measured fidelities over these nodes' stored
        memories (see `icae_rag.compressors.kvzip.budget_summary`); nodes not stored yet are counted
        under "missing", not compressed."""
        texts = [t for t in (node_text(n, quiet=True) for n in nodes) if t is not None]
        with self._cache.lock:
            memories = [self.store.get(t, self.compressor) for t in texts]
        found = [m for m in memories if m is not None]
        if not found:
            raise InvalidInputError(f"none of the {len(texts)} nodes has a stored memory: ingest them first")
        return budget_summary(found) | {"missing": len(memories) - len(found)}

    @staticmethod
    def _leads(nodes: Sequence[BaseNode], kept: list[BaseNode]) -> list[str | None]:
        """Per kept node, the document text of its previous node, if that node is among `nodes`."""
        by_id = {n.node_id: n for n in nodes}
        leads = []
        for node in kept:
            before = node.prev_node and by_id.get(node.prev_node.node_id)
            text = before.get_content(metadata_mode=MetadataMode.NONE) if before else ""
            leads.append(text if text.strip() else None)
        return leads

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """As __call__, off the event loop."""
        return await asyncio.to_thread(self.__call__, nodes, **kwargs)
