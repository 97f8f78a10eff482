"""`SoftPromptIngestion`: compress nodes into the slot store as they are inserted into an index."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode, TransformComponent

from icae_rag.errors import InvalidInputError

from ._shared import SlotCache, load_compressor_arg, node_text, open_store_arg

if TYPE_CHECKING:
    from icae_rag.slot_store import SlotStore

logger = logging.getLogger(__name__)


class SoftPromptIngestion(TransformComponent):
    """An ingestion transformation that precomputes each node's soft prompt into a SlotStore.

    It returns the nodes unchanged (same objects, no metadata added); their soft prompts are keyed
    by the text the synthesizer will read (``node.get_content(MetadataMode.LLM)``), so a later query
    finds them in the store and compresses nothing. Put it last, after anything that changes node
    text or LLM-visible metadata; otherwise queries miss the store and compress again (correct, slower).
    Nodes without text are skipped (debug log).

    Note: an `IngestionPipeline` with a cache skips transformations whose output it has cached, so
    on a cache hit this step does not run; point it at the same slot store as before.

    Example::

        index = VectorStoreIndex.from_documents(
            docs, storage_context=storage_context, embed_model=default_embed_model(),
            transformations=[SentenceSplitter(), SoftPromptIngestion(compressor, store)])
    """

    compressor_name: str = Field(
        default="icae", description="Compressor kind or checkpoint directory loaded when no instance is given.")
    device: str = Field(default="auto", description="Device the compressor is loaded on (auto, cpu, cuda, mps).")
    slot_store_dir: str = Field(description="Slot store directory the soft prompts are written to.")
    batch_size: int = Field(default=8, gt=0, description="Spans/chunks compressed per forward pass.")

    _cache: Any = PrivateAttr()

    def __init__(self, compressor: Any = None, slot_store: Any = None, **data: Any) -> None:
        """`compressor`: a Compressor, a kind or a checkpoint dir; `slot_store`: a SlotStore or a directory (required)."""
        name = data.pop("compressor_name", None)
        store_dir = data.pop("slot_store_dir", None)
        store = open_store_arg(slot_store if slot_store is not None else store_dir)
        if store is None:
            raise InvalidInputError("SoftPromptIngestion needs a slot store (a SlotStore or a directory) to write to")
        super().__init__(compressor_name=name or "icae", slot_store_dir=str(store.path), **data)
        loaded, name = load_compressor_arg(compressor if compressor is not None else name, self.device)
        self.compressor_name = name
        self._cache = SlotCache(loaded, store)

    @classmethod
    def class_name(cls) -> str:
        return "SoftPromptIngestion"

    @property
    def slot_store(self) -> SlotStore:
        """The SlotStore written to."""
        return self._cache.store

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Compress the nodes missing from the store; return the nodes unchanged."""
        texts = [t for t in (node_text(n, quiet=True) for n in nodes) if t is not None]
        if texts:
            n = self._cache.precompute(texts, batch_size=self.batch_size, progress=bool(kwargs.get("show_progress")))
            logger.debug("precomputed %d of %d soft prompts into %s", n, len(texts), self.slot_store_dir)
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """As __call__, off the event loop."""
        return await asyncio.to_thread(self.__call__, nodes, **kwargs)
