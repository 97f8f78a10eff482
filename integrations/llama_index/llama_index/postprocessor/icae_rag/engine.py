"""One-call wiring: the query engine, and an offline FAISS index over the packaged MiniLM embeddings."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import BasePromptTemplate

from icae_rag.compressors import as_compressor
from icae_rag.errors import InvalidInputError
from icae_rag.stores import as_store

from ._shared import reject_removed_keywords
from .postprocessor import IcaeRagPostprocessor
from .synthesizer import IcaeRagSynthesizer

MINILM_DIM = 384
# FAISS and the HuggingFace embeddings are an optional extra: a postprocessor needs neither.
FAISS_EXTRA = 'pip install "llama-index-postprocessor-icae-rag[faiss]"'


def _import_extra(module: str) -> Any:
    """Import `module`, a package of the [faiss] extra, or raise an ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is missing ({e}): the FAISS index and MiniLM embedding helpers need "
                          f"the [faiss] extra: {FAISS_EXTRA}") from e


def build_query_engine(index: Any, compressor: Any = None, store: Any = None, *, streaming: bool = False,
                       keep_top_raw: int = 0, max_context_positions: int | None = None,
                       question_template: BasePromptTemplate | str | None = None,
                       node_postprocessors: Sequence[BaseNodePostprocessor] = (),
                       generation: dict[str, Any] | None = None, best_last: bool = True, device: str = "auto",
                       **kwargs: Any):
    """`index.as_query_engine` with a `IcaeRagPostprocessor` (after `node_postprocessors`) and a `IcaeRagSynthesizer`.

    Both share one compressor (an instance, a kind or a checkpoint dir; default kvzip) and one
    optional memory store (a store, a directory or a store URI). `best_last`: the synthesizer reads the highest-scored node last, next to the
    question. `generation`: decoding options (max_new_tokens, ...); other `kwargs` go to
    `index.as_query_engine` (e.g. similarity_top_k). The engine's llm is a `MockLLM`, so
    `Settings.llm` (OpenAI by default) is never resolved.
    """
    reject_removed_keywords(kwargs, "build_query_engine")
    loaded, store = as_compressor(compressor, device=device), as_store(store)
    post = IcaeRagPostprocessor(loaded, store, keep_top_raw=keep_top_raw, max_context_positions=max_context_positions)
    synth = IcaeRagSynthesizer(loaded, store, streaming=streaming, question_template=question_template,
                              best_last=best_last, **(generation or {}))
    return index.as_query_engine(llm=MockLLM(), node_postprocessors=[*node_postprocessors, post],
                                 response_synthesizer=synth, **kwargs)


def default_embed_model(*, device: str | None = None, **kwargs: Any):
    """`HuggingFaceEmbedding` on the packaged all-MiniLM-L6-v2 (384-d, L2-normalised), loaded offline."""
    from icae_rag.models.backbones import default_encoder_dir

    HuggingFaceEmbedding = _import_extra("llama_index.embeddings.huggingface").HuggingFaceEmbedding
    # local_files_only goes through to SentenceTransformer: a local directory, never the hub.
    return HuggingFaceEmbedding(model_name=str(default_encoder_dir()), normalize=True, device=device,
                                local_files_only=True, **kwargs)


def faiss_vector_store(dim: int = MINILM_DIM, kind: Literal["flat", "hnsw"] = "flat", *, hnsw_m: int = 32,
                       ef_search: int = 64):
    """A `FaissVectorStore` scoring by inner product (cosine over normalised embeddings): higher is better.

    "flat" is exact (`IndexFlatIP`); "hnsw" is approximate (`hnsw_m` links per node, `ef_search` candidates).
    """
    faiss = _import_extra("faiss")
    FaissVectorStore = _import_extra("llama_index.vector_stores.faiss").FaissVectorStore
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)  # HNSW defaults to L2: say IP
        index.hnsw.efSearch = ef_search
    else:
        raise InvalidInputError(f"unknown FAISS index kind {kind!r}: use 'flat' or 'hnsw'")
    return FaissVectorStore(faiss_index=index)


def build_faiss_index(documents: Sequence[Any], *, kind: Literal["flat", "hnsw"] = "flat", embed_model: Any = None,
                      transformations: Sequence[Any] | None = None, **kwargs: Any):
    """A `VectorStoreIndex` of documents on a FAISS inner-product store, embedded offline by MiniLM.

    `transformations` (e.g. ``[SentenceSplitter(), IcaeRagIngestion(...)]``) also apply to later
    `index.insert` calls. Persist with ``index.storage_context.persist(dir)``; reload with `load_faiss_index`.
    """
    from llama_index.core import StorageContext, VectorStoreIndex

    embed_model = embed_model or default_embed_model()
    dim = len(embed_model.get_text_embedding("dimension probe"))
    storage = StorageContext.from_defaults(vector_store=faiss_vector_store(dim, kind))
    return VectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=embed_model,
                                           transformations=list(transformations) if transformations else None,
                                           **kwargs)


def load_faiss_index(persist_dir: str | os.PathLike, *, embed_model: Any = None, **kwargs: Any):
    """Reload an index persisted by ``index.storage_context.persist(persist_dir)`` on a FAISS store."""
    from llama_index.core import StorageContext, load_index_from_storage

    FaissVectorStore = _import_extra("llama_index.vector_stores.faiss").FaissVectorStore
    persist_dir = os.fspath(persist_dir)
    storage = StorageContext.from_defaults(vector_store=FaissVectorStore.from_persist_dir(persist_dir),
                                           persist_dir=persist_dir)
    return load_index_from_storage(storage, embed_model=embed_model or default_embed_model(), **kwargs)
