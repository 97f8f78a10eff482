"""End to end on the real defaults (SmolLM2-135M decoder, packaged MiniLM embeddings, FAISS), offline."""

from __future__ import annotations

import asyncio
import socket

import pytest
from li_helpers import GatedStream, spy_compress
from llama_index.core import Document
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import (
    MEMORY_KEY,
    IcaeRagIngestion,
    build_faiss_index,
    build_query_engine,
    default_embed_model,
    load_faiss_index,
)

from icae_rag import new_compressor
from icae_rag.stores import SqliteMemoryStore

pytestmark = pytest.mark.integration

PASSAGES = [
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the "
    "National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their third Super Bowl title. "
    "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "The Amazon rainforest covers most of the Amazon basin of South America. The forest spans nine nations, "
    "and the majority of it lies within Brazil.",
    "Photosynthesis converts light energy into chemical energy stored in glucose; plants release oxygen as a "
    "by-product of splitting water.",
    "The Rhine rises in the Swiss Alps and flows north through Germany and the Netherlands to the North Sea.",
]
QUESTION = "Where was Super Bowl 50 played?"


@pytest.fixture(scope="module")
def offline():
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def embed_model(offline):
    return default_embed_model(device="cpu")


@pytest.fixture(scope="module", params=["kvzip", "icae"])
def memory_kind(request, offline):
    """The default kind (kvzip) as a user gets it, then ICAE untrained: its answers are noise, the plumbing real."""
    return new_compressor(request.param, device="cpu")


@pytest.fixture(scope="module")
def documents():
    return [Document(text=t, id_=f"doc{i}", metadata={"title": f"passage {i}"}) for i, t in enumerate(PASSAGES)]


def test_faiss_minilm_engine_end_to_end(offline, embed_model, memory_kind, documents, tmp_path, monkeypatch):
    store = SqliteMemoryStore.in_persist_dir(tmp_path)
    index = build_faiss_index(documents, kind="flat", embed_model=embed_model,
                              transformations=[SentenceSplitter(), IcaeRagIngestion(memory_kind, store)])
    assert len(store) == len(documents)
    index.storage_context.persist(tmp_path)
    store.close()

    # A new session: reload the index and the memory store beside it.
    index = load_faiss_index(tmp_path, embed_model=embed_model)
    store = SqliteMemoryStore.in_persist_dir(tmp_path)
    calls = spy_compress(memory_kind, monkeypatch)
    retrieved = index.as_retriever(similarity_top_k=2).retrieve(QUESTION)
    assert "Levi's Stadium" in retrieved[0].node.get_content()
    assert 1.0 >= retrieved[0].score > retrieved[1].score, "inner product of unit vectors: cosine"

    engine = build_query_engine(index, memory_kind, store, keep_top_raw=1, similarity_top_k=2,
                                generation={"max_new_tokens": 12})
    response = engine.query(QUESTION)
    assert isinstance(response, Response) and response.response
    assert [(n.node.node_id, n.score) for n in response.source_nodes] == [(n.node.node_id, n.score) for n in retrieved]
    assert [{k: v for k, v in n.node.metadata.items() if k != MEMORY_KEY} for n in response.source_nodes] == [
        n.node.metadata for n in retrieved]
    assert [n.node.metadata[MEMORY_KEY] == "raw" for n in response.source_nodes] == [True, False]
    assert calls == [] and store.stats.misses == 0, "every memory was precomputed at ingestion"

    asyn = asyncio.run(engine.aquery(QUESTION))
    assert isinstance(asyn, Response) and asyn.response == response.response

    streaming = build_query_engine(index, memory_kind, store, streaming=True, keep_top_raw=1, similarity_top_k=2,
                                   generation={"max_new_tokens": 12})
    streamed = streaming.query(QUESTION)
    assert isinstance(streamed, StreamingResponse)
    chunks = list(streamed.response_gen)
    assert "".join(chunks).strip() == response.response, "an untrained ICAE may answer nothing: 'Empty Response'"

    async def astream() -> list[str]:
        answer = await streaming.aquery(QUESTION)
        assert isinstance(answer, AsyncStreamingResponse)
        return [c async for c in answer.async_response_gen()]

    assert "".join(asyncio.run(astream())) == "".join(chunks)
    assert calls == []


def test_hnsw_index_retrieves_like_the_flat_one(offline, embed_model, documents):
    flat = build_faiss_index(documents, kind="flat", embed_model=embed_model).as_retriever(similarity_top_k=2)
    hnsw = build_faiss_index(documents, kind="hnsw", embed_model=embed_model).as_retriever(similarity_top_k=2)
    for question in (QUESTION, "Which country holds most of the Amazon rainforest?"):
        a, b = flat.retrieve(question), hnsw.retrieve(question)
        assert [n.node.get_content() for n in a] == [n.node.get_content() for n in b]
        assert [n.score for n in a] == pytest.approx([n.score for n in b], abs=1e-5)


def test_raw_baseline_answers_and_streams_from_the_retrieved_passage(offline, embed_model, documents, monkeypatch):
    raw = new_compressor("raw", device="cpu")
    index = build_faiss_index(documents, embed_model=embed_model)
    engine = build_query_engine(index, raw, similarity_top_k=1, generation={"max_new_tokens": 24})
    answer = engine.query(QUESTION).response
    assert "Levi's Stadium" in answer
    assert asyncio.run(engine.aquery(QUESTION)).response == answer

    streaming = build_query_engine(index, raw, streaming=True, similarity_top_k=1, generation={"max_new_tokens": 24})
    gate = GatedStream(raw, monkeypatch)
    gen = streaming.query(QUESTION).response_gen
    chunks = [gate.first_piece_while_decoding(gen), *gen]
    assert len(chunks) > 3 and "".join(chunks).strip() == answer
