"""icae_rag.serving without any framework: the shared lock and recent memories, budget fitting, TokenStream."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conftest import TEXT, spy_compress
from icae_rag.compressors import as_compressor
from icae_rag.errors import InvalidInputError
from icae_rag.serving import MemoryCache, TokenStream
from icae_rag.stores import SqliteMemoryStore, as_store

TEXTS = ["Apollo 11 landed on the Moon in July 1969.", "Eagle was the lunar module.", TEXT]


def test_caches_of_one_compressor_share_the_lock_and_recent_memories(tiny_icae, tiny_raw, monkeypatch):
    calls = spy_compress(tiny_icae, monkeypatch)
    first, second = MemoryCache(tiny_icae), MemoryCache(tiny_icae)
    assert first.lock is second.lock and MemoryCache(tiny_raw).lock is not first.lock
    assert first.resolve(TEXTS).compressed == 3
    again = second.resolve(TEXTS[::-1])
    assert calls == [3] and again.compressed == 0, "the second cache finds the first one's memories"
    assert again.keys[::-1] == first.resolve(TEXTS).keys



def test_resolved_names_its_memories_and_keeps_the_0_1_name_with_a_warning(tiny_raw):
    resolved = MemoryCache(tiny_raw).resolve(TEXTS)
    assert [m.source_tokens for m in resolved.memories] == [len(tiny_raw.tokenize(t)) for t in TEXTS]
    with pytest.warns(DeprecationWarning, match="use Resolved.memories"):
        assert resolved.prompts is resolved.memories

def test_precompute_fills_the_store(tiny_raw, tmp_path):
    with pytest.raises(InvalidInputError, match="needs a memory store"):
        MemoryCache(tiny_raw).precompute(TEXTS)
    cache = MemoryCache(tiny_raw, SqliteMemoryStore(tmp_path))
    assert cache.precompute(TEXTS) == 3 and cache.precompute(TEXTS) == 0
    assert all(cache.store.has(t, tiny_raw) for t in TEXTS)


def test_fit_keeps_raw_texts_first_and_drops_what_does_not_fit(tiny_icae):
    cache = MemoryCache(tiny_icae)
    free, compressed = cache.fit(TEXTS, keep_raw=1)
    assert compressed == 2 and free[0].key is None and all(f.key is not None for f in free[1:])
    assert free[0].positions == cache.count_tokens(TEXTS[0])
    cap = cache.fit(TEXTS[:1])[0][0].positions  # room for the first text compressed, not raw
    assert cap < free[0].positions
    capped, _ = cache.fit(TEXTS, keep_raw=1, max_positions=cap)
    assert capped[0].key is not None and capped[1:] == [None, None]
    assert cache.fit(TEXTS, max_positions=1)[0] == [None, None, None]
    with pytest.raises(InvalidInputError, match="keep_raw"):
        cache.fit(TEXTS, keep_raw=-1)


def test_token_stream_gives_the_default_when_empty_and_raises_the_workers_error():
    rlock = threading.RLock()
    assert list(TokenStream(lambda: iter(["a", "b"]), rlock).tokens("empty")) == ["a", "b"]
    assert list(TokenStream(lambda: iter(()), rlock).tokens("empty")) == ["empty"]

    def failing():
        yield "a"
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        list(TokenStream(failing, rlock).tokens())

    async def read() -> list[str]:
        return [p async for p in TokenStream(lambda: iter(()), rlock).atokens("empty")]

    assert asyncio.run(read()) == ["empty"]


def test_argument_helpers(tiny_raw, tmp_path):
    assert as_compressor(tiny_raw) is tiny_raw
    with pytest.raises(InvalidInputError, match="compressor must be"):
        as_compressor(42)
    store = SqliteMemoryStore(tmp_path)
    assert as_store(store) is store and as_store(None) is None
    assert as_store(tmp_path / "other").path == tmp_path / "other"
    with pytest.raises(InvalidInputError, match="store must be"):
        as_store(42)
