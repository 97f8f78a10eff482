"""LlamaIndex integration of icae-rag: retrieved nodes become soft prompts a decoder answers from.

- `SoftPromptCompressor` (node postprocessor): nodes -> soft prompts, from the slot store when present.
- `SoftPromptSynthesizer` (response synthesizer): answers from the soft prompts, with streaming and async.
- `SoftPromptIngestion` (ingestion transformation): precomputes soft prompts into the slot store.
- `best_last`: the reading order the synthesizer uses (highest-scored node next to the question).
- `build_query_engine`: the three wired on one shared compressor, in one call.
- `build_faiss_index` / `faiss_vector_store` / `default_embed_model` / `load_faiss_index`: an
  offline FAISS index over the packaged all-MiniLM-L6-v2.

An application that drives the decoder itself uses the core's `icae_rag.serving` (`MemoryCache`,
`TokenStream`) with the same compressor object, so it shares the components' lock and recent memories.
"""

from icae_rag.stores import SqliteMemoryStore

from ._shared import SLOT_KEY, best_last, node_text
from .engine import (
    build_faiss_index,
    build_query_engine,
    default_embed_model,
    faiss_vector_store,
    load_faiss_index,
)
from .ingestion import SoftPromptIngestion
from .postprocessor import SoftPromptCompressEndEvent, SoftPromptCompressor
from .synthesizer import SoftPromptSynthesizer

__all__ = [
    "SLOT_KEY",
    "SoftPromptCompressEndEvent",
    "SoftPromptCompressor",
    "SoftPromptIngestion",
    "SoftPromptSynthesizer",
    "SqliteMemoryStore",
    "best_last",
    "build_faiss_index",
    "build_query_engine",
    "default_embed_model",
    "faiss_vector_store",
    "load_faiss_index",
    "node_text",
]
