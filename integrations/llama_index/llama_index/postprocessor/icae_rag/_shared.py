"""What the postprocessor, the synthesizer and the ingestion step share: node text, memory marks, construction."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import (
    BaseComponent,
    BaseNode,
    ImageNode,
    MetadataMode,
    Node,
    NodeWithScore,
)

from icae_rag import DEFAULT_KIND
from icae_rag.compressors import as_compressor
from icae_rag.errors import InvalidInputError
from icae_rag.serving import MemoryCache
from icae_rag.stores import as_store

if TYPE_CHECKING:
    from icae_rag.compressors.base import Compressor
    from icae_rag.stores import MemoryStore

logger = logging.getLogger(__name__)

# Node-metadata key through which the postprocessor tells the synthesizer which memory stands
# for a node, or RAW for a node kept as text. Tensors never go into metadata.
MEMORY_KEY = "icae_rag_slot_key"  # the value predates the name: kept, applications read it
RAW = "raw"


def node_text(node: BaseNode, *, quiet: bool = False) -> str | None:
    """The text a decoder reads for `node` (its LLM-visible metadata included), or None if it has none.

    Logged as warnings (debug when `quiet`): a node without text is left out; a node carrying an
    image, audio or video gives its text only (icae-rag compresses text).
    """
    log = logger.debug if quiet else logger.warning
    media = isinstance(node, ImageNode) or (isinstance(node, Node) and any(
        getattr(node, f"{kind}_resource", None) is not None for kind in ("image", "audio", "video")))
    if media:
        log("node %s carries an image, audio or video: icae-rag reads only its text", node.node_id)
    if not node.get_content(metadata_mode=MetadataMode.NONE).strip():
        log("node %s has no text: it is left out of the context", node.node_id)
        return None
    return node.get_content(metadata_mode=MetadataMode.LLM)


def score_order(node: NodeWithScore) -> tuple[bool, float]:
    """Sort key ranking nodes lowest first: unscored nodes, then by score."""
    return node.score is not None, node.score or 0.0


def best_last(nodes: Sequence[NodeWithScore]) -> list[NodeWithScore]:
    """The nodes in reading order, the highest-scored last (next to the question); unscored nodes
    first, equal scores in the given order."""
    # Measured (docs/experiments.md): the decoder reads a node best right before the question, and
    # memories encoded apart lose most with distance, since no later text carries their content forward.
    return sorted(nodes, key=score_order)


def mark(node: BaseNode, value: str) -> BaseNode:
    """A copy of `node` whose metadata records `value` under MEMORY_KEY, hidden from the LLM and the embedder."""

    def hide(keys: list[str]) -> list[str]:
        return list(keys) if MEMORY_KEY in keys else [*keys, MEMORY_KEY]

    return node.model_copy(update={
        "metadata": {**node.metadata, MEMORY_KEY: value},
        "excluded_llm_metadata_keys": hide(node.excluded_llm_metadata_keys),
        "excluded_embed_metadata_keys": hide(node.excluded_embed_metadata_keys),
    })


# Keywords 0.2 removed. Pydantic and `as_query_engine` would drop them silently and the component
# would run without its store or its cap: they raise, naming the new keyword.
REMOVED_KEYWORDS = {"slot_store": "store", "slot_store_dir": "store_uri",  # 0.1's name -> 0.2's
                    "max_soft_tokens": "max_context_positions"}


def reject_removed_keywords(data: dict[str, Any], owner: str) -> None:
    """Raise TypeError if `data` holds a keyword 0.2 removed, naming its replacement."""
    for old, new in REMOVED_KEYWORDS.items():
        if old in data:
            raise TypeError(f"{owner}: the keyword {old} was removed in 0.2, pass {new}= (see CHANGELOG.md)")


class UsesCompressor:
    """The `compressor` and `store` of a component that keeps them in a `MemoryCache` (`_cache`)."""

    @property
    def compressor(self) -> Compressor:
        """The icae_rag Compressor in use."""
        return self._cache.compressor

    @property
    def store(self) -> MemoryStore | None:
        """The memory store in use, or None."""
        return self._cache.store


class IcaeRagComponent(UsesCompressor, BaseComponent):
    """Serialisable fields and construction of `IcaeRagPostprocessor` and `IcaeRagIngestion`."""

    needs_store: ClassVar[bool] = False

    compressor_name: str = Field(
        default=DEFAULT_KIND, description="Compressor kind or checkpoint directory loaded when no instance is given.")
    device: str = Field(default="auto", description="Device the compressor is loaded on (auto, cpu, cuda, mps).")
    store_uri: str | None = Field(default=None, description="Memory store directory or URI, if any.")
    batch_size: int = Field(default=8, gt=0, description="Spans/chunks compressed per forward pass.")

    _cache: MemoryCache = PrivateAttr()

    def __init__(self, compressor: Any = None, store: Any = None, **data: Any) -> None:
        """`compressor`: a Compressor, a kind or a checkpoint dir; `store`: a memory store, a directory,
        a store URI or None."""
        reject_removed_keywords(data, type(self).__name__)
        name = data.pop("compressor_name", None) or DEFAULT_KIND
        uri = data.pop("store_uri", None)
        store = as_store(store if store is not None else uri)
        if store is None and self.needs_store:
            raise InvalidInputError(f"{type(self).__name__} needs a memory store (a SqliteMemoryStore, a directory or a store URI) to write to")
        super().__init__(compressor_name=name, store_uri=None if store is None else str(store.path), **data)
        arg = compressor if compressor is not None else name
        loaded = as_compressor(arg, device=self.device)
        self.compressor_name = os.fspath(arg) if isinstance(arg, (str, os.PathLike)) else loaded.label
        self._cache = MemoryCache(loaded, store)
