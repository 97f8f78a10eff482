"""The MemoryStore contract, run on both stores (SqliteMemoryStore, LanceMemoryStore), plus Lance specifics."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from slot_worker import FakeCompressor, expected

from conftest import TEXT
from icae_rag import new_compressor
from icae_rag.errors import BackboneMismatchError, CorruptFileError, InvalidInputError
from icae_rag.io import read_tensors
from icae_rag.memories.base import Memory
from icae_rag.models.backbones import TINY_DECODER
from icae_rag.stores import MemoryKey, MemoryStore, SqliteMemoryStore, is_lance_uri, open_store

lance = pytest.importorskip("lance")
from icae_rag.stores.lance import SCHEMA_KEY, LanceMemoryStore, _schema  # noqa: E402

OTHER = "A second passage. It talks about something else entirely, namely rivers and bridges."
LOGGERS = {"slot": "icae_rag.stores.sqlite", "lance": "icae_rag.stores.lance"}


@pytest.fixture(params=["slot", "lance"])
def store_uri(request, tmp_path) -> str:
    """A fresh store location of each kind: a SqliteMemoryStore directory, a local .lance table."""
    return str(tmp_path / ("slots" if request.param == "slot" else "memories.lance"))


@pytest.fixture(scope="session")
def tiny_kvzip():
    return new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, window_tokens=32)


@pytest.fixture(scope="session")
def tiny_kvzip_int8():
    return new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, window_tokens=32, storage="int8")


def same_memory(a: Memory, b: Memory, tmp_path: Path) -> bool:
    """Bit-identical tensors and header, whatever the memory kind (compared through their files)."""
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    (ta, ma), (tb, mb) = read_tensors(tmp_path / "a.safetensors"), read_tensors(tmp_path / "b.safetensors")
    return ma == mb and ta.keys() == tb.keys() and all(
        ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def damage(store: MemoryStore, key: MemoryKey, bytes_of_other: MemoryKey | None) -> None:
    """Make the stored bytes of `key` unreadable (or another key's memory), as a crash or bad copy would."""
    if isinstance(store, SqliteMemoryStore):
        blob = store.path / key.blob
        blob.write_bytes((store.path / bytes_of_other.blob).read_bytes() if bytes_of_other else b"garbage")
        return
    ds = lance.dataset(store.uri)
    row = ds.to_table(filter=f"text_sha256 = '{key.text_sha256}'").to_pylist()[0]
    if bytes_of_other:
        other = ds.to_table(filter=f"text_sha256 = '{bytes_of_other.text_sha256}'").to_pylist()[0]
        row["memory"] = other["memory"]
    else:
        row["memory"] = row["memory"][:40]
    ds.delete(f"row_id = '{row['row_id']}'")
    import pyarrow as pa

    lance.write_dataset(pa.Table.from_pylist([row], schema=_schema()), store.uri, mode="append")


@pytest.mark.parametrize("kind", ["raw", "kvzip", "kvzip_int8"])
def test_round_trip_is_bit_identical(store_uri, kind, request, tmp_path):
    comp = request.getfixturevalue("tiny_raw" if kind == "raw" else f"tiny_{kind}")
    memory = comp.compress(TEXT)
    with open_store(store_uri) as store:
        assert not store.has(TEXT, comp)
        store.put(TEXT, comp, memory)
        assert store.has(TEXT, comp) and len(store) == 1
    with open_store(store_uri) as reopened:
        got = reopened.get(TEXT, comp)
        assert vars(reopened.stats) == {"hits": 1, "misses": 0, "writes": 0}
    assert type(got) is type(memory) and same_memory(got, memory, tmp_path)


def test_open_store_picks_the_implementation_and_reopens_by_path(tmp_path):
    assert isinstance(open_store(tmp_path / "dir"), SqliteMemoryStore)
    assert isinstance(open_store(tmp_path / "m.lance"), LanceMemoryStore)
    forced = open_store(f"lance://{tmp_path / 'plain'}")
    assert isinstance(forced, LanceMemoryStore) and forced.uri == str(tmp_path / "plain")
    comp = FakeCompressor()
    forced.compress_missing(["one"], comp)
    assert isinstance(open_store(str(forced.path)), LanceMemoryStore), "store.path round-trips"
    assert isinstance(open_store(tmp_path / "plain"), LanceMemoryStore), "an existing table, whatever its name"
    assert all(is_lance_uri(u) for u in ["s3://bucket/m.lance", "gs://b/m", "az://c/m", "lance://s3://b/m"])
    with pytest.raises(InvalidInputError, match="storage_options"):
        open_store(tmp_path / "dir", storage_options={"region": "x"})


def test_second_get_or_compress_compresses_nothing(store_uri):
    comp = FakeCompressor()
    store = open_store(store_uri)
    first = store.get_or_compress(["one", "two", "one"], comp)
    assert comp.calls == [2], "a text repeated in one call is compressed once"
    second = store.get_or_compress(["two", "one"], comp)
    assert comp.calls == [2], "the second call is served from the store"
    assert torch.equal(second[1].embeddings, first[0].embeddings)
    assert vars(store.stats) == {"hits": 2, "misses": 2, "writes": 2}


def test_compress_missing_writes_only_what_is_missing(store_uri):
    comp = FakeCompressor()
    store = open_store(store_uri)
    assert store.compress_missing(["a", "b", "a"], comp) == 2
    assert store.compress_missing(["a", "b", "c"], comp) == 1
    assert store.compress_missing(["c"], comp) == 0
    assert comp.calls == [2, 1] and len(store) == 3
    with pytest.raises(InvalidInputError, match="list of texts"):
        store.compress_missing("a", comp)


def test_other_compressor_version_is_never_served(store_uri, tiny_raw, tiny_kvzip, caplog):
    store = open_store(store_uri)
    store.put(TEXT, tiny_raw, tiny_raw.compress(TEXT))
    with caplog.at_level(logging.WARNING):
        assert store.get(TEXT, tiny_kvzip) is None
    assert "not served" in caplog.text
    assert store.get_or_compress([TEXT], tiny_kvzip)[0].compressor == "kvzip" and len(store) == 2
    with pytest.raises(BackboneMismatchError, match="not by this compressor"):
        store.put(TEXT, tiny_raw, tiny_kvzip.compress(TEXT))
    with pytest.raises(InvalidInputError, match="another text"):
        store.put(TEXT, tiny_raw, tiny_raw.compress(OTHER))


@pytest.mark.parametrize("how", ["truncate", "swap"])
def test_unreadable_bytes_are_a_miss_with_a_warning(store_uri, how, caplog):
    comp = FakeCompressor()
    store = open_store(store_uri)
    store.get_or_compress(["one", "two"], comp)
    damage(store, MemoryKey.of("one", comp), MemoryKey.of("two", comp) if how == "swap" else None)
    with caplog.at_level(logging.WARNING):
        assert store.get("one", comp) is None
    assert "dropping an unreadable" in caplog.text
    assert not store.has("one", comp), "the bad row is deleted"
    again = store.get_or_compress(["one"], comp)[0]
    assert torch.equal(again.embeddings, expected("one", comp.rows).embeddings) and comp.calls == [2, 1]


def test_a_key_written_by_two_writers_reads_as_one_memory(store_uri):
    comp = FakeCompressor()
    first, second = open_store(store_uri), open_store(store_uri)
    first.put("one", comp, expected("one", comp.rows))
    second.put("one", comp, expected("one", comp.rows))
    assert len(first) == 1 and first.get("one", comp) is not None
    if isinstance(first, LanceMemoryStore):  # appends: two rows until compact()
        assert first.row_count() == 2
        assert first.compact() == 1 and first.row_count() == 1
        assert torch.equal(first.get("one", comp).embeddings, expected("one", comp.rows).embeddings)
        assert lance.dataset(first.uri).has_index, "compact indexes the text hash"
        second.put("two", comp, expected("two", comp.rows))  # rows after the index are found too
        assert first.get("two", comp) is not None and first.compact() == 0 and len(first) == 2


def test_two_writers_at_once_lose_nothing(store_uri):
    comp = FakeCompressor(rows=4)
    texts = [f"text number {i}" for i in range(60)]
    errors: list[BaseException] = []

    def write(part: list[str]) -> None:
        try:
            with open_store(store_uri) as store:  # one store object per writer, as separate processes have
                for i in range(0, len(part), 5):
                    store.compress_missing(part[i:i + 5], comp)
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    writers = [threading.Thread(target=write, args=(texts[:40],)), threading.Thread(target=write, args=(texts[20:],))]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert not errors, errors
    store = open_store(store_uri)
    assert len(store) == 60
    got = store.get_or_compress(texts, comp)
    assert store.stats.misses == 0
    assert all(torch.equal(m.embeddings, expected(t, 4).embeddings) for m, t in zip(got, texts, strict=True))


def test_lance_table_of_a_newer_schema_or_another_table_is_refused(tmp_path):
    import pyarrow as pa

    uri = str(tmp_path / "m.lance")
    newer = _schema().with_metadata({SCHEMA_KEY: json.dumps({"schema": 99})})
    lance.write_dataset(pa.Table.from_pylist([], schema=newer), uri)
    with pytest.raises(CorruptFileError, match="newer icae-rag"):
        LanceMemoryStore(uri)
    lance.write_dataset(pa.table({"x": [1]}), str(tmp_path / "other.lance"))
    with pytest.raises(CorruptFileError, match="not an icae-rag memory store"):
        LanceMemoryStore(tmp_path / "other.lance")
