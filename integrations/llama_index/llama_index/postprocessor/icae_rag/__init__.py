"""LlamaIndex integration of icae-rag: retrieved nodes become memories a decoder answers from.

- `MemoryPostprocessor` (node postprocessor): nodes -> memories, from the memory store when present.
- `MemorySynthesizer` (response synthesizer): answers from the memories, with streaming and async.
- `MemoryIngestion` (ingestion transformation): precomputes memories into the memory store.
- `best_last`: the reading order the synthesizer uses (highest-scored node next to the question).
- `build_query_engine`: the three wired on one shared compressor, in one call.
- `build_faiss_index` / `faiss_vector_store` / `default_embed_model` / `load_faiss_index`: an
  offline FAISS index over the packaged all-MiniLM-L6-v2.

An application that drives the decoder itself uses the core's `icae_rag.serving` (`MemoryCache`,
`TokenStream`) with the same compressor object, so it shares the components' lock and recent memories.
"""

from typing import Any

from icae_rag._deprecation import class_aliases, renamed

from ._shared import MEMORY_KEY, MemoryComponent, best_last, node_text
from .engine import (
    build_faiss_index,
    build_query_engine,
    default_embed_model,
    faiss_vector_store,
    load_faiss_index,
)
from .ingestion import MemoryIngestion
from .postprocessor import MemoryPostprocessor, SoftPromptCompressEndEvent
from .synthesizer import MemorySynthesizer

__all__ = [
    "MEMORY_KEY",
    "MemoryComponent",
    "MemoryIngestion",
    "MemoryPostprocessor",
    "MemorySynthesizer",
    "SoftPromptCompressEndEvent",
    "best_last",
    "build_faiss_index",
    "build_query_engine",
    "default_embed_model",
    "faiss_vector_store",
    "load_faiss_index",
    "node_text",
]


def _sqlite_store() -> type:
    from icae_rag.stores import SqliteMemoryStore

    return SqliteMemoryStore


# Deprecated names (one release). The stores are the core's: import them from icae_rag.stores.
_class_alias = class_aliases(__name__, {
    "SoftPromptCompressor": lambda: MemoryPostprocessor,
    "SoftPromptSynthesizer": lambda: MemorySynthesizer,
    "SoftPromptIngestion": lambda: MemoryIngestion,
    "SoftPromptComponent": lambda: MemoryComponent,
    "SlotStore": _sqlite_store,
})


def __getattr__(name: str) -> Any:
    if name == "SLOT_KEY":  # deprecated name of MEMORY_KEY (one release)
        renamed(f"{__name__}.SLOT_KEY", f"{__name__}.MEMORY_KEY")
        return MEMORY_KEY
    return _class_alias(name)
