"""The query path reads memories from a Lance store unchanged: written by `index_local` or by the ingestion step."""

from __future__ import annotations

import time

import pytest
from li_helpers import TEXTS, spy_compress
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import (
    IcaeRagIngestion,
    IcaeRagPostprocessor,
    build_query_engine,
)

from icae_rag.compressors import load_compressor
from icae_rag.indexing import index_local

pytest.importorskip("lance")
from icae_rag.stores import LanceMemoryStore  # noqa: E402

KVZIP = "kvzip:decoder=tiny-llama,window_tokens=32"
DOCS = [Document(text=t, id_=f"doc{i}", metadata={"file": f"doc{i}.txt"}) for i, t in enumerate(TEXTS)]


def _nodes():
    return SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents(DOCS)


def test_nodes_indexed_into_lance_are_served_to_queries(tmp_path, monkeypatch):
    uri = str(tmp_path / "memories.lance")
    nodes = _nodes()
    assert index_local(nodes, KVZIP, uri, device="cpu").written == len(nodes)
    compressor = load_compressor(KVZIP, device="cpu")
    calls = spy_compress(compressor, monkeypatch)
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    engine = build_query_engine(index, compressor, uri, similarity_top_k=3, generation={"max_new_tokens": 4})
    engine.query("When did Apollo 11 land?")
    assert calls == [], "nodes are keyed as the postprocessor keys them: the query compresses nothing"
    post = IcaeRagPostprocessor(compressor, uri)
    assert isinstance(post.store, LanceMemoryStore) and post.to_dict()["store_uri"] == uri
    reopened = IcaeRagPostprocessor.from_dict(post.to_dict())
    assert isinstance(reopened.store, LanceMemoryStore)


def test_ingestion_step_writes_a_lance_store(tmp_path, monkeypatch):
    compressor = load_compressor(KVZIP, device="cpu")
    store = LanceMemoryStore(tmp_path / "memories.lance")
    index = VectorStoreIndex.from_documents(
        DOCS, embed_model=MockEmbedding(embed_dim=8),
        transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), IcaeRagIngestion(compressor, store)])
    assert len(store) == len(index.docstore.docs)
    calls = spy_compress(compressor, monkeypatch)
    build_query_engine(index, compressor, store, similarity_top_k=2, generation={"max_new_tokens": 4}).query("Who?")
    assert calls == []


def test_qa_app_answers_from_a_lance_store(tmp_path, _icae_proto, monkeypatch):
    import copy

    from fastapi.testclient import TestClient
    from qa_app_helpers import HashEmbedding

    from examples.qa_app.app import create_app, parse_args
    from examples.qa_app.service import Settings

    compressor = copy.deepcopy(_icae_proto)
    uri = str(tmp_path / "memories.lance")
    settings = Settings(data_dir=tmp_path / "data", store=uri)
    with TestClient(create_app(settings, compressor=compressor, embed_model=HashEmbedding())) as client:
        assert isinstance(client.app.state.service.store, LanceMemoryStore)
        r = client.post("/api/documents", params={"filename": "apollo.txt"}, content=TEXTS[0].encode())
        assert r.status_code == 202
        job_id = r.json()["job"]["id"]
        for _ in range(600):  # the upload is indexed by a background job
            job = client.get(f"/api/jobs/{job_id}").json()["job"]
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done", job
    assert len(LanceMemoryStore(uri)) >= 1
    calls = spy_compress(compressor, monkeypatch)
    with TestClient(create_app(settings, compressor=compressor, embed_model=HashEmbedding())) as client:
        r = client.post("/api/ask", json={"question": "When did Apollo 11 land?", "mode": "compressed"})
        assert r.status_code == 200 and calls == [], "the memories come from the Lance store"
    assert parse_args(["--store", uri])[0].store == uri
