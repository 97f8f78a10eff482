"""LlamaIndex integration of icae-rag: retrieved nodes become soft prompts a decoder answers from.

- `SoftPromptCompressor` (node postprocessor): nodes -> soft prompts, from the slot store when present.
- `SoftPromptSynthesizer` (response synthesizer): answers from the soft prompts, with streaming and async.
- `SoftPromptIngestion` (ingestion transformation): precomputes soft prompts into the slot store.
- `build_query_engine`: the three wired on one shared compressor, in one call.
- `build_faiss_index` / `faiss_vector_store` / `default_embed_model` / `load_faiss_index`: an
  offline FAISS index over the packaged all-MiniLM-L6-v2.
- `SlotCache`, `TokenStream`, `node_text`: the pieces the components are built from, for an
  application that drives the decoder itself (examples/qa_app): one lock per compressor object,
  soft prompts from memory or the slot store, decoding in a worker thread.
"""

from icae_rag.slot_store import SlotStore

from ._shared import SLOT_KEY, SlotCache, TokenStream, node_text
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
    "SlotCache",
    "SlotStore",
    "SoftPromptCompressEndEvent",
    "SoftPromptCompressor",
    "SoftPromptIngestion",
    "SoftPromptSynthesizer",
    "TokenStream",
    "build_faiss_index",
    "build_query_engine",
    "default_embed_model",
    "faiss_vector_store",
    "load_faiss_index",
    "node_text",
]
