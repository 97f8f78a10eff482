"""The package's renamed names (issue 24) still work for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings

import llama_index.postprocessor.icae_rag as pkg
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.postprocessor.icae_rag import (
    MEMORY_KEY,
    MemoryComponent,
    MemoryIngestion,
    MemoryPostprocessor,
    MemorySynthesizer,
    build_query_engine,
)

from icae_rag.stores import SqliteMemoryStore

RENAMED = [
    ("", "SoftPromptCompressor", MemoryPostprocessor),
    ("", "SoftPromptSynthesizer", MemorySynthesizer),
    ("", "SoftPromptIngestion", MemoryIngestion),
    ("", "SoftPromptComponent", MemoryComponent),
    ("", "SlotStore", SqliteMemoryStore),
    (".postprocessor", "SoftPromptCompressor", MemoryPostprocessor),
    (".synthesizer", "SoftPromptSynthesizer", MemorySynthesizer),
    (".ingestion", "SoftPromptIngestion", MemoryIngestion),
    ("._shared", "SoftPromptComponent", MemoryComponent),
]


@pytest.mark.parametrize(("sub", "old", "new"), RENAMED)
def test_an_old_name_warns_and_is_the_new_class(sub, old, new):
    module = importlib.import_module(pkg.__name__ + sub)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use .*{new.__name__}"):
        assert getattr(module, old) is new
    assert old not in getattr(module, "__all__", [])


def test_the_package_exports_only_its_own_names():
    assert "SqliteMemoryStore" not in pkg.__all__ and "SlotStore" not in pkg.__all__
    assert MEMORY_KEY == "icae_rag_slot_key"  # the node-metadata key applications read is unchanged
    with pytest.warns(DeprecationWarning, match="SLOT_KEY is deprecated"):
        assert pkg.SLOT_KEY == MEMORY_KEY


def test_old_keywords_and_serialised_dicts_still_build(tiny_raw, tmp_path):
    store = SqliteMemoryStore(tmp_path)
    with pytest.warns(DeprecationWarning, match=r"slot_store=\.\.\.\) is deprecated: use store="):
        post = MemoryPostprocessor(tiny_raw, slot_store=store)
    with pytest.warns(DeprecationWarning, match="slot_store is deprecated: use MemoryPostprocessor.store"):
        assert post.slot_store is store
    with pytest.warns(DeprecationWarning, match=r"slot_store_dir=\.\.\.\) is deprecated: use store_uri="):
        ingest = MemoryIngestion(tiny_raw, slot_store_dir=str(tmp_path))
    assert ingest.store_uri == str(tmp_path) and ingest.store.path == tmp_path
    # A dict serialised before the rename (old class name and field) loads into the new class.
    old = {"class_name": "SoftPromptCompressor", "compressor_name": "raw", "device": "cpu",
           "slot_store_dir": str(tmp_path), "keep_top_raw": 1, "max_soft_tokens": None, "batch_size": 8}
    with pytest.warns(DeprecationWarning, match="slot_store_dir"):
        rebuilt = MemoryPostprocessor.from_dict(old)
    assert rebuilt.to_dict() == {**{k: v for k, v in old.items() if k != "slot_store_dir"},
                                 "class_name": "MemoryPostprocessor", "store_uri": str(tmp_path)}
    with pytest.raises(TypeError, match="store_uri= only"):
        MemoryIngestion(tiny_raw, slot_store_dir=str(tmp_path), store_uri=str(tmp_path))
    with pytest.warns(DeprecationWarning, match="slot_store"):
        synth = MemorySynthesizer(tiny_raw, slot_store=store, max_new_tokens=2)
    assert synth.store is store
    index = VectorStoreIndex.from_documents([Document(text="The ship sailed at dawn.")],
                                            embed_model=MockEmbedding(embed_dim=8))
    with pytest.warns(DeprecationWarning, match="build_query_engine"):
        build_query_engine(index, tiny_raw, slot_store=store, generation={"max_new_tokens": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert MemoryPostprocessor(tiny_raw, store=store).store is store
        build_query_engine(index, tiny_raw, store, generation={"max_new_tokens": 2})
