"""IcaeRagPostprocessor on tiny random backbones (ICAE and the default kvzip): 1:1 nodes, budget, bad nodes, async,
cache, serialisation."""

from __future__ import annotations

import asyncio
import logging
import warnings

import llama_index.postprocessor.icae_rag as pkg
import pytest
from li_helpers import EventCollector, make_nodes, spy_compress
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.icae_rag import (
    MEMORY_KEY,
    IcaeRagCompressEndEvent,
    IcaeRagIngestion,
    IcaeRagPostprocessor,
    IcaeRagSynthesizer,
    build_query_engine,
)

from icae_rag.errors import InvalidInputError
from icae_rag.stores import MemoryKey, SqliteMemoryStore


def test_one_output_node_per_input_with_id_score_text_and_metadata(tiny_memory_kind):
    nodes = make_nodes()
    before = [n.model_dump() for n in nodes]
    out = IcaeRagPostprocessor(tiny_memory_kind).postprocess_nodes(nodes, query_str="When did Apollo 11 land?")
    assert [n.node.node_id for n in out] == ["n0", "n1", "n2", "n3"]
    assert [n.score for n in out] == [n.score for n in nodes]
    for old, new in zip(nodes, out, strict=True):
        assert new is not old and new.node is not old.node
        assert {k: v for k, v in new.node.metadata.items() if k != MEMORY_KEY} == old.node.metadata
        assert new.node.relationships == old.node.relationships
        for mode in (MetadataMode.NONE, MetadataMode.LLM, MetadataMode.EMBED):
            assert new.node.get_content(metadata_mode=mode) == old.node.get_content(metadata_mode=mode)
        key = MemoryKey.parse(new.node.metadata[MEMORY_KEY])
        assert key == MemoryKey.of(old.node.get_content(metadata_mode=MetadataMode.LLM), tiny_memory_kind)
    assert [n.model_dump() for n in nodes] == before, "the caller's nodes are never mutated"


def test_keep_top_raw_keeps_the_best_scored_nodes_as_text(tiny_memory_kind):
    out = IcaeRagPostprocessor(tiny_memory_kind, keep_top_raw=2).postprocess_nodes(make_nodes())
    marks = {n.node.node_id: n.node.metadata[MEMORY_KEY] for n in out}
    assert marks["n1"] == marks["n3"] == "raw", "scores 0.9 and 0.5 are the best two"
    assert marks["n0"] != "raw" and marks["n2"] != "raw", "a node without a score ranks last"


def test_budget_caps_context_positions(tiny_memory_kind, caplog):
    texts = [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in make_nodes()]
    soft = [tiny_memory_kind.compress(t).num_positions for t in texts]
    cap = soft[1] + soft[0]
    assert len(tiny_memory_kind.tokenize(texts[1])) > cap and soft[3] > soft[0], "the sizes this test relies on"
    with EventCollector(kind=IcaeRagCompressEndEvent) as seen, caplog.at_level(logging.INFO):
        out = IcaeRagPostprocessor(tiny_memory_kind, keep_top_raw=1, max_context_positions=cap).postprocess_nodes(make_nodes())
    # Rank order n1 (raw, too long: compressed instead), n3 (too big: dropped), n0 (fits), n2 (no room left).
    assert [n.node.node_id for n in out] == ["n0", "n1"], "kept nodes stay in the input order"
    assert all(n.node.metadata[MEMORY_KEY] != "raw" for n in out)
    event = seen.events[-1]
    assert (event.nodes_in, event.memory_nodes, event.raw_nodes, event.dropped_nodes) == (4, 2, 0, 2)
    assert event.context_positions == cap and "compressing it instead" in caplog.text
    assert IcaeRagPostprocessor(tiny_memory_kind, max_context_positions=1).postprocess_nodes(make_nodes()) == []
    assert "no context is left" in caplog.text


def test_empty_nodes_are_dropped_and_image_nodes_keep_their_text(tiny_raw, caplog):
    nodes = [NodeWithScore(node=TextNode(text="  \n", id_="empty", metadata={"file": "x"}), score=0.9),
             NodeWithScore(node=ImageNode(text="A photo of the Eagle lander.", image="aGVsbG8=", id_="img"), score=0.5)]
    with caplog.at_level(logging.WARNING):
        out = IcaeRagPostprocessor(tiny_raw).postprocess_nodes(nodes)
    assert [n.node.node_id for n in out] == ["img"]
    assert "node empty has no text" in caplog.text and "node img carries an image" in caplog.text


def test_query_is_optional_and_async_gives_the_same_nodes(tiny_memory_kind):
    post = IcaeRagPostprocessor(tiny_memory_kind, keep_top_raw=1)
    sync = post.postprocess_nodes(make_nodes())  # no query bundle: compression ignores the query
    asyn = asyncio.run(post.apostprocess_nodes(make_nodes(), query_bundle=QueryBundle("When?")))
    assert [n.node.metadata for n in sync] == [n.node.metadata for n in asyn]
    with pytest.raises(ValueError, match="Cannot specify both"):
        post.postprocess_nodes(make_nodes(), query_bundle=QueryBundle("a"), query_str="b")
    assert post.postprocess_nodes([]) == []


def test_a_memory_store_makes_the_second_call_compress_nothing(tiny_memory_kind, tmp_path, monkeypatch):
    calls = spy_compress(tiny_memory_kind, monkeypatch)
    store = SqliteMemoryStore(tmp_path)
    with EventCollector(kind=IcaeRagCompressEndEvent) as seen:
        IcaeRagPostprocessor(tiny_memory_kind, store).postprocess_nodes(make_nodes())
        assert calls == [4] and len(store) == 4
        # A new process would have an empty memory: a second postprocessor reading the same directory.
        again = IcaeRagPostprocessor(tiny_memory_kind, str(tmp_path)).postprocess_nodes(make_nodes())
    assert calls == [4], "all four memories come from the store"
    assert [e.compressed for e in seen.events] == [4, 0]
    assert len(again) == 4


def test_class_name_to_dict_and_from_dict(tiny_memory_kind, tmp_path, monkeypatch):
    post = IcaeRagPostprocessor(tiny_memory_kind, SqliteMemoryStore(tmp_path), keep_top_raw=1, max_context_positions=300)
    data = post.to_dict()
    assert IcaeRagPostprocessor.class_name() == data["class_name"] == "IcaeRagPostprocessor"
    assert data == {"class_name": "IcaeRagPostprocessor", "compressor_name": tiny_memory_kind.label, "device": "auto",
                    "store_uri": str(tmp_path), "keep_top_raw": 1, "max_context_positions": 300, "batch_size": 8}
    loads = []
    monkeypatch.setattr("icae_rag.compressors.load_compressor",
                        lambda name, device: loads.append((name, device)) or tiny_memory_kind)
    rebuilt = IcaeRagPostprocessor.from_dict(data)
    assert loads == [(tiny_memory_kind.label, "auto")]
    assert rebuilt.compressor is tiny_memory_kind and rebuilt.store.path == tmp_path
    assert rebuilt.to_dict() == data
    serialised_by_0_1 = {**data, "class_name": "MemoryPostprocessor"}  # the class's 0.1 name
    assert IcaeRagPostprocessor.from_dict(serialised_by_0_1).to_dict() == data


def test_bad_arguments_raise_clear_errors(tiny_raw):
    with pytest.raises(ValueError, match="keep_top_raw"):
        IcaeRagPostprocessor(tiny_raw, keep_top_raw=-1)
    with pytest.raises(InvalidInputError, match="compressor must be"):
        IcaeRagPostprocessor(42)
    with pytest.raises(InvalidInputError, match="store must be"):
        IcaeRagPostprocessor(tiny_raw, store=42)


def test_the_package_exports_its_own_names_and_takes_the_store_without_warning(tiny_raw, tmp_path):
    assert "SqliteMemoryStore" not in pkg.__all__  # the stores are the core's: icae_rag.stores
    assert MEMORY_KEY == "icae_rag_slot_key"  # the node-metadata key applications read is unchanged
    store = SqliteMemoryStore(tmp_path)
    index = VectorStoreIndex.from_documents([Document(text="The ship sailed at dawn.")],
                                            embed_model=MockEmbedding(embed_dim=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert IcaeRagPostprocessor(tiny_raw, store=store).store is store
        assert IcaeRagSynthesizer(tiny_raw, store=store, max_new_tokens=2).store is store
        ingest = IcaeRagIngestion(tiny_raw, store_uri=str(tmp_path))
        build_query_engine(index, tiny_raw, store, generation={"max_new_tokens": 2})
    assert ingest.store_uri == str(tmp_path) and ingest.store.path == tmp_path


def test_the_store_keywords_removed_in_0_2_raise_naming_the_new_ones(tiny_raw, tmp_path):
    index = VectorStoreIndex.from_documents([Document(text="The ship sailed at dawn.")],
                                            embed_model=MockEmbedding(embed_dim=8))
    old = {"slot_store": str(tmp_path)}  # 0.1's keyword: dropped silently, the store would be lost
    for build in (lambda: IcaeRagPostprocessor(tiny_raw, **old), lambda: IcaeRagSynthesizer(tiny_raw, **old),
                  lambda: build_query_engine(index, tiny_raw, **old)):
        with pytest.raises(TypeError, match="removed in 0.2, pass store="):
            build()
    old_dir = {"slot_store_dir": str(tmp_path)}  # 0.1's field, as a 0.1 dict serialised it
    with pytest.raises(TypeError, match="removed in 0.2, pass store_uri="):
        IcaeRagPostprocessor.from_dict({"compressor_name": "raw", **old_dir})
    with pytest.raises(TypeError, match="removed in 0.2, pass store_uri="):
        IcaeRagIngestion(tiny_raw, **old_dir)
    # 0.1's cap, renamed to what it counts: dropped silently, the cap would be lost.
    with pytest.raises(TypeError, match="max_soft_tokens was removed in 0.2, pass max_context_positions="):
        IcaeRagPostprocessor(tiny_raw, max_soft_tokens=10)
    with pytest.raises(TypeError, match="pass max_context_positions="):
        IcaeRagPostprocessor.from_dict({"compressor_name": "raw", "max_soft_tokens": 10})
