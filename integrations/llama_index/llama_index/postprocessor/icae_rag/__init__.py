"""LlamaIndex integration of icae-rag: retrieved nodes become memories a decoder answers from.

- `IcaeRagPostprocessor` (node postprocessor): nodes -> memories, from the memory store when present.
- `IcaeRagSynthesizer` (response synthesizer): answers from the memories, with streaming and async.
- `IcaeRagIngestion` (ingestion transformation): precomputes memories into the memory store.
- `best_last`: the reading order the synthesizer uses (highest-scored node next to the question).
- `build_query_engine`: the three wired on one shared compressor, in one call.
- `build_faiss_index` / `faiss_vector_store` / `default_embed_model` / `load_faiss_index`: an
  offline FAISS index over the packaged all-MiniLM-L6-v2.

An application that drives the decoder itself uses the core's `icae_rag.serving` (`MemoryCache`,
`TokenStream`) with the same compressor object, so it shares the components' lock and recent memories.
"""

from ._shared import MEMORY_KEY, IcaeRagComponent, best_last, node_text
from .engine import (
    build_faiss_index,
    build_query_engine,
    default_embed_model,
    faiss_vector_store,
    load_faiss_index,
)
from .ingestion import IcaeRagIngestion
from .postprocessor import IcaeRagCompressEndEvent, IcaeRagPostprocessor
from .synthesizer import IcaeRagSynthesizer

__all__ = [
    "MEMORY_KEY",
    "IcaeRagComponent",
    "IcaeRagCompressEndEvent",
    "IcaeRagIngestion",
    "IcaeRagPostprocessor",
    "IcaeRagSynthesizer",
    "best_last",
    "build_faiss_index",
    "build_query_engine",
    "default_embed_model",
    "faiss_vector_store",
    "load_faiss_index",
    "node_text",
]
