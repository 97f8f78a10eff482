"""Query engines and ingestion on tiny backbones (ICAE and the default kvzip) and a mock embedding: wiring, cache
hits, no OpenAI."""

from __future__ import annotations

import ast
import asyncio
import sys
from functools import partial
from pathlib import Path

import llama_index.postprocessor.icae_rag as pkg
import pytest
from li_helpers import TEXTS, spy_compress
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.postprocessor.icae_rag import (
    IcaeRagIngestion,
    IcaeRagPostprocessor,
    IcaeRagSynthesizer,
    build_faiss_index,
    build_query_engine,
    default_embed_model,
    faiss_vector_store,
    load_faiss_index,
)

from icae_rag.errors import InvalidInputError
from icae_rag.stores import SqliteMemoryStore

DOCS = [Document(text=t, id_=f"doc{i}", metadata={"file": f"doc{i}.txt"}) for i, t in enumerate(TEXTS)]


@pytest.fixture
def no_openai(monkeypatch):
    """Fail if anything resolves LlamaIndex's default LLM (OpenAI unless IS_TESTING is set)."""
    monkeypatch.setattr(Settings, "_llm", None)
    monkeypatch.delenv("IS_TESTING", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("Settings.llm was resolved: the engine would have used OpenAI")

    monkeypatch.setattr("llama_index.core.settings.resolve_llm", refuse)


def _index(**kwargs) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8), **kwargs)


def test_build_query_engine_sync_async_and_streaming(tiny_memory_kind, no_openai):
    engine = build_query_engine(_index(), tiny_memory_kind, keep_top_raw=1, similarity_top_k=3,
                                generation={"max_new_tokens": 6})
    assert isinstance(engine, RetrieverQueryEngine)
    assert list(engine.get_prompts()) == ["response_synthesizer:question_template"]
    response = engine.query("When did Apollo 11 land?")
    contexts = engine._response_synthesizer.contexts(response.source_nodes)
    assert isinstance(response, Response)
    assert response.response == tiny_memory_kind.answer("When did Apollo 11 land?", contexts, max_new_tokens=6).text
    assert sum(isinstance(c, str) for c in contexts) == 1 and len(contexts) == 3  # keep_top_raw=1
    assert len(response.source_nodes) == 3 and all(n.node.ref_doc_id.startswith("doc") for n in response.source_nodes)
    asyn = asyncio.run(engine.aquery("When did Apollo 11 land?"))
    assert asyn.response == response.response

    streaming = build_query_engine(_index(), tiny_memory_kind, streaming=True, similarity_top_k=2,
                                   generation={"max_new_tokens": 6})
    streamed = streaming.query("When did Apollo 11 land?")
    assert isinstance(streamed, StreamingResponse)
    assert len(list(streamed.response_gen)) > 1

    async def astream() -> list[str]:
        answer = await streaming.aquery("When did Apollo 11 land?")
        assert isinstance(answer, AsyncStreamingResponse)
        return [c async for c in answer.async_response_gen()]

    assert len(asyncio.run(astream())) > 1


def test_async_query_uses_the_native_async_postprocessor(tiny_raw, monkeypatch):
    engine = build_query_engine(_index(), tiny_raw, generation={"max_new_tokens": 4})
    sync = engine.query("Who walked on the Moon?")
    native = IcaeRagPostprocessor._apostprocess_nodes
    calls = []

    async def spy(self, nodes, query_bundle=None):
        calls.append(len(nodes))
        return await native(self, nodes, query_bundle)

    def blocked(*args, **kwargs):
        raise AssertionError("aquery must not call the sync _postprocess_nodes")

    monkeypatch.setattr(IcaeRagPostprocessor, "_postprocess_nodes", blocked)
    monkeypatch.setattr(IcaeRagPostprocessor, "_apostprocess_nodes", spy)
    answer = asyncio.run(engine.aquery("Who walked on the Moon?"))
    assert calls == [len(sync.source_nodes)]
    assert answer.response == sync.response and sync.response
    assert [n.node.node_id for n in answer.source_nodes] == [n.node.node_id for n in sync.source_nodes]


def test_concurrent_async_queries_share_one_compressor_safely(tiny_memory_kind):
    engine = build_query_engine(_index(), tiny_memory_kind, keep_top_raw=1, similarity_top_k=2,
                                generation={"max_new_tokens": 6})
    questions = ["When did Apollo 11 land?", "Who walked on the Moon?", "What was the lander called?"]
    sequential = [engine.query(q).response for q in questions]

    async def together() -> list[str]:
        return [r.response for r in await asyncio.gather(*(engine.aquery(q) for q in questions))]

    assert asyncio.run(together()) == sequential


def test_manual_wiring_with_as_query_engine(tiny_raw, no_openai):
    from llama_index.core.llms import MockLLM

    post, synth = IcaeRagPostprocessor(tiny_raw), IcaeRagSynthesizer(tiny_raw, max_new_tokens=4)
    index = _index()
    with pytest.raises(AssertionError, match="OpenAI"):  # LlamaIndex's pitfall, which build_query_engine avoids
        index.as_query_engine(node_postprocessors=[post], response_synthesizer=synth)
    engine = index.as_query_engine(llm=MockLLM(), node_postprocessors=[post], response_synthesizer=synth)
    response = engine.query("Who walked on the Moon?")
    # The answer is the decoder's, read from the postprocessed nodes, not the MockLLM's.
    contexts = synth.contexts(response.source_nodes)
    assert len(contexts) == len(response.source_nodes) > 0
    assert response.response == tiny_raw.answer("Who walked on the Moon?", contexts, max_new_tokens=4).text
    assert response.response and response.response != MockLLM().complete("Who walked on the Moon?").text


def test_second_query_skips_compression(tiny_memory_kind, tmp_path, monkeypatch):
    calls = spy_compress(tiny_memory_kind, monkeypatch)
    engine = build_query_engine(_index(), tiny_memory_kind, SqliteMemoryStore(tmp_path), similarity_top_k=2,
                                generation={"max_new_tokens": 4})
    engine.query("When did Apollo 11 land?")
    assert calls == [2]
    engine.query("When did Apollo 11 land?")
    assert calls == [2], "the second query finds every memory in the shared table or in the store"


def test_ingestion_precomputes_so_queries_compress_nothing(tiny_memory_kind, tmp_path, monkeypatch):
    store = SqliteMemoryStore.in_persist_dir(tmp_path)
    ingest = IcaeRagIngestion(tiny_memory_kind, store)
    index = _index(transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), ingest])
    n_nodes = len(index.docstore.docs)
    assert len(store) == n_nodes >= len(DOCS)
    calls = spy_compress(tiny_memory_kind, monkeypatch)
    engine = build_query_engine(index, tiny_memory_kind, store, similarity_top_k=3, generation={"max_new_tokens": 4})
    assert vars(store.stats) == {"hits": 0, "misses": n_nodes, "writes": n_nodes}
    engine.query("When did Apollo 11 land?")
    assert calls == [], "the query pays nothing for compression"
    assert vars(store.stats) == {"hits": 3, "misses": n_nodes, "writes": n_nodes}
    index.insert(Document(text="Michael Collins stayed in lunar orbit aboard Columbia.", id_="late"))
    assert len(store) == n_nodes + 1 and calls == [1], "inserting a document compresses its node"
    assert ingest.to_dict()["store_uri"] == str(store.path)
    with pytest.raises(InvalidInputError, match="needs a memory store"):
        IcaeRagIngestion(tiny_memory_kind)


def test_faiss_vector_stores_score_by_inner_product():
    import faiss

    flat = faiss_vector_store(8, "flat")._faiss_index
    hnsw = faiss_vector_store(8, "hnsw", ef_search=32)._faiss_index
    assert isinstance(flat, faiss.IndexFlatIP) and flat.d == 8
    assert isinstance(hnsw, faiss.IndexHNSWFlat) and hnsw.metric_type == faiss.METRIC_INNER_PRODUCT
    assert hnsw.hnsw.efSearch == 32
    with pytest.raises(InvalidInputError, match="'flat' or 'hnsw'"):
        faiss_vector_store(8, "ivf")


# The [faiss] extra's modules: the package must import and build its components without them.
EXTRA_MODULES = ("faiss", "llama_index.vector_stores.faiss", "llama_index.embeddings.huggingface")


def test_the_package_imports_the_faiss_extra_only_inside_the_helpers():
    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Module-level statements only: an import inside a function runs when the helper is called.
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith(EXTRA_MODULES)], (path.name, names)


@pytest.mark.parametrize("missing", EXTRA_MODULES)
def test_a_missing_faiss_extra_names_the_install_command(missing, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    build = partial(build_faiss_index, DOCS, embed_model=MockEmbedding(embed_dim=8))
    load = partial(load_faiss_index, tmp_path, embed_model=MockEmbedding(embed_dim=8))
    helpers = {"faiss": [build], "llama_index.vector_stores.faiss": [build, load],
               "llama_index.embeddings.huggingface": [default_embed_model]}[missing]
    for helper in helpers:
        with pytest.raises(ImportError, match=r'pip install "llama-index-postprocessor-icae-rag\[faiss\]"'):
            helper()


def test_ingestion_encodes_each_kvzip_node_after_the_node_before_it(tmp_path, monkeypatch):
    from icae_rag import new_compressor
    from icae_rag.models.backbones import TINY_DECODER

    kvzip = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER)
    seen: list = []
    original = type(kvzip).compress_many

    def spy(self, texts, **kw):
        seen.append((list(texts), kw.get("leads")))
        return original(self, texts, **kw)

    monkeypatch.setattr(type(kvzip), "compress_many", spy)
    nodes = SentenceSplitter(chunk_size=32, chunk_overlap=0).get_nodes_from_documents([Document(text=" ".join(TEXTS))])
    assert len(nodes) >= 2, "the document must split into several nodes"
    store = SqliteMemoryStore(tmp_path)
    IcaeRagIngestion(kvzip, store, in_context=True)(nodes)
    texts, leads = seen[-1]
    assert leads[0] is None and leads[1:] == [n.get_content() for n in nodes[:-1]]
    assert store.get(texts[1], kvzip).metadata["lead_sha256"], "a query finds the node's in-context memory"
    seen.clear()
    IcaeRagIngestion(kvzip, SqliteMemoryStore(tmp_path / "apart"))(nodes)
    assert seen[-1][1] is None, "by default nodes are encoded apart"


def test_kinds_that_encode_texts_alone_refuse_leads(tiny_icae):
    with pytest.raises(InvalidInputError, match="cannot use leads"):
        tiny_icae.compress_many(["Apollo 11 landed in 1969."], leads=["Before it came Apollo 10."])
    with pytest.raises(InvalidInputError, match="1 texts need 1 leads"):
        tiny_icae.compress_many(["Apollo 11 landed in 1969."], leads=[None, None])


def test_ingestion_reports_the_budget_distribution_of_a_corpus(tmp_path):
    from llama_index.core.schema import TextNode

    from icae_rag import new_compressor
    from icae_rag.errors import InvalidInputError
    from icae_rag.models.backbones import TINY_DECODER

    kvzip = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.3)
    ingest = IcaeRagIngestion(kvzip, SqliteMemoryStore.in_persist_dir(tmp_path))
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)]
    late = TextNode(text="Michael Collins stayed in lunar orbit aboard Columbia.", id_="late")
    with pytest.raises(InvalidInputError, match="ingest them first"):
        ingest.budget_report(nodes)
    ingest(nodes)
    report = ingest.budget_report([*nodes, late])
    memories = [ingest.store.get(n.get_content(), kvzip) for n in nodes]
    assert report["memories"] == len(nodes) and report["missing"] == 1
    assert report["source_tokens"] == sum(m.source_tokens for m in memories)
    assert report["ratio"] == pytest.approx(report["source_tokens"] / sum(m.source_tokens / m.compression_ratio
                                                                          for m in memories), rel=1e-2)
    assert 0.3 <= report["fidelity"]["min"] <= report["fidelity"]["mean"] <= 1
    assert sum(report["ratio_counts"].values()) == len(nodes)
