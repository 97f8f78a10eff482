"""SqliteMemoryStore: round trip, version isolation, crash safety, corruption fallbacks, concurrent processes."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slot_worker import FakeCompressor, expected, texts

from conftest import TEXT, same_memory, spy_compress
from icae_rag.errors import BackboneMismatchError, CorruptFileError, InvalidInputError
from icae_rag.stores import MemoryKey, SqliteMemoryStore
from icae_rag.stores.sqlite import DB_NAME, LEGACY_PERSIST_SUBDIR, PERSIST_SUBDIR

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "slot_worker.py"
OTHER = "A second passage. It talks about something else entirely, namely rivers and bridges."


def _worker(mode: str, path: Path, n: int, rows: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(path), str(n), str(rows)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_round_trip_is_bit_identical(tiny_compressor, tmp_path):
    prompt = tiny_compressor.compress(TEXT)
    with SqliteMemoryStore(tmp_path / "slots") as store:
        assert not store.has(TEXT, tiny_compressor)
        store.put(TEXT, tiny_compressor, prompt)
        assert store.has(TEXT, tiny_compressor) and len(store) == 1
    with SqliteMemoryStore(tmp_path / "slots") as reopened:
        got = reopened.get(TEXT, tiny_compressor)
        assert reopened.stats.hits == 1
    assert same_memory(got, prompt)
    assert got.pieces == prompt.pieces
    assert (got.compressor, got.compressor_version, got.backbone) == (
        prompt.compressor, prompt.compressor_version, prompt.backbone)


def test_second_get_or_compress_compresses_nothing(tiny_icae, tmp_path, monkeypatch):
    calls = spy_compress(tiny_icae, monkeypatch)
    store = SqliteMemoryStore(tmp_path)
    first = store.get_or_compress([TEXT, OTHER, TEXT], tiny_icae, batch_size=2)
    assert calls == [2], "a text repeated in one call is compressed once"
    assert torch.equal(first[0].embeddings, first[2].embeddings)
    second = store.get_or_compress([OTHER, TEXT], tiny_icae)
    assert calls == [2], "the second call must be served from the store"
    assert torch.equal(second[1].embeddings, first[0].embeddings)
    assert vars(store.stats) == {"hits": 2, "misses": 2, "writes": 2}


def test_other_compressor_version_is_never_served(tiny_icae, tiny_raw, tmp_path, caplog):
    store = SqliteMemoryStore.in_persist_dir(tmp_path)
    assert store.path == tmp_path / PERSIST_SUBDIR
    store.put(TEXT, tiny_icae, tiny_icae.compress(TEXT))
    old_version = tiny_icae.version
    with torch.no_grad():
        tiny_icae.memory.add_(0.5)  # as training would: new weights, new version
    assert tiny_icae.version != old_version
    with caplog.at_level(logging.WARNING, logger="icae_rag.stores.sqlite"):
        assert store.get(TEXT, tiny_icae) is None
    assert f"icae/{old_version}/" in caplog.text and "not served" in caplog.text
    assert store.get(TEXT, tiny_raw) is None, "another decoder/compressor kind is not served either"
    fresh = store.get_or_compress([TEXT], tiny_icae)[0]
    assert fresh.compressor_version == tiny_icae.version and len(store) == 2
    with pytest.raises(BackboneMismatchError, match="not by this compressor"):
        store.put(TEXT, tiny_raw, fresh)



def test_a_persist_dir_from_0_1_is_opened_in_place(tiny_raw, tmp_path):
    # 0.1 named the directory icae_rag_slots/: its memories keep being served, nothing is moved.
    with SqliteMemoryStore(tmp_path / LEGACY_PERSIST_SUBDIR) as old:
        old.put(TEXT, tiny_raw, tiny_raw.compress(TEXT))
    assert (PERSIST_SUBDIR, LEGACY_PERSIST_SUBDIR) == ("icae_rag_memories", "icae_rag_slots")
    with SqliteMemoryStore.in_persist_dir(tmp_path) as store:
        assert store.path == tmp_path / LEGACY_PERSIST_SUBDIR
        assert store.get(TEXT, tiny_raw) is not None
    assert not (tmp_path / PERSIST_SUBDIR).exists()
    fresh = tmp_path / "fresh"
    with SqliteMemoryStore.in_persist_dir(fresh) as store:
        assert store.path == fresh / PERSIST_SUBDIR and not (fresh / LEGACY_PERSIST_SUBDIR).exists()

def test_put_refuses_a_soft_prompt_of_another_text(tiny_raw, tmp_path):
    store = SqliteMemoryStore(tmp_path)
    with pytest.raises(InvalidInputError, match="another text"):
        store.put(TEXT, tiny_raw, tiny_raw.compress(OTHER))
    with pytest.raises(InvalidInputError, match="list of texts"):
        store.get_or_compress(TEXT, tiny_raw)
    with pytest.raises(InvalidInputError, match="empty"):
        store.get("  ", tiny_raw)


@pytest.mark.parametrize("damage", ["truncate", "delete", "swap"])
def test_unreadable_blob_is_a_miss_with_a_warning(tmp_path, caplog, damage):
    comp = FakeCompressor()
    store = SqliteMemoryStore(tmp_path)
    store.get_or_compress(["one", "two"], comp)
    blob = tmp_path / MemoryKey.of("one", comp).blob
    if damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:40])
    elif damage == "delete":
        blob.unlink()
    else:  # a readable soft prompt, but of another text: must not be served as "one"
        blob.write_bytes((tmp_path / MemoryKey.of("two", comp).blob).read_bytes())
    with caplog.at_level(logging.WARNING, logger="icae_rag.stores.sqlite"):
        assert store.get("one", comp) is None
    assert "dropping an unreadable entry" in caplog.text
    assert len(store) == 1 and not store.has("one", comp), "the bad row is deleted"
    again = store.get_or_compress(["one"], comp)[0]
    assert torch.equal(again.embeddings, expected("one", comp.rows).embeddings)
    assert comp.calls == [2, 1]


def test_not_a_database_raises_corrupt_file_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not a sqlite database, just some bytes" * 100)
    with pytest.raises(CorruptFileError, match="delete the directory"):
        SqliteMemoryStore(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is a file"):
        SqliteMemoryStore(tmp_path / "file")


def test_store_of_a_newer_schema_is_refused(tmp_path):
    SqliteMemoryStore(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(CorruptFileError, match="newer icae-rag"):
        SqliteMemoryStore(tmp_path)


def test_leftovers_of_an_interrupted_write_are_ignored_then_pruned(tmp_path):
    comp = FakeCompressor()
    store = SqliteMemoryStore(tmp_path)
    store.get_or_compress(["kept"], comp)
    # What a writer killed mid-way leaves: a half-written temp file, and a blob whose row never came.
    orphan = tmp_path / MemoryKey.of("orphan", comp).blob
    expected("orphan", comp.rows).save(orphan)
    half = orphan.parent / f".{orphan.name}.abc123.tmp"
    half.write_bytes(orphan.read_bytes()[:100])
    store.close()
    with SqliteMemoryStore(tmp_path) as reopened:
        assert len(reopened) == 1 and reopened.get("kept", comp) is not None
        assert reopened.get("orphan", comp) is None
        assert reopened.prune(min_age=3600) == 0, "young files may belong to a live writer"
        assert reopened.prune(min_age=0) == 2
        assert not orphan.exists() and not half.exists()
        assert reopened.get("kept", comp) is not None


def test_reopen_after_killing_a_writer_mid_write(tmp_path):
    writer = _worker("write", tmp_path, 100_000, 2048)  # 512 KB blobs: kills land mid-write
    try:
        for _ in range(5):
            assert writer.stdout.readline() == "wrote\n", writer.stderr.read()
        time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    comp = FakeCompressor(2048)
    with SqliteMemoryStore(tmp_path) as store:
        n = len(store)
        assert n >= 5
        got = [store.get(t, comp) for t in texts(n)]
        assert all(p is not None and torch.equal(p.embeddings, expected(t, 2048).embeddings)
                   for t, p in zip(texts(n), got, strict=True))
        assert store.stats.misses == 0, "every indexed entry is whole"
        store.get_or_compress(texts(n + 1), comp)  # and the store takes new writes
        assert len(store) == n + 1


def test_concurrent_readers_while_one_writer_writes(tmp_path):
    n = 30
    SqliteMemoryStore(tmp_path).close()  # create the schema before the processes race
    readers = [_worker("read", tmp_path, n, 16) for _ in range(2)]
    writer = _worker("write", tmp_path, n, 16)
    try:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        for r in readers:
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            assert out.strip() == str(n)
    finally:
        for p in (writer, *readers):
            if p.poll() is None:
                p.kill()
