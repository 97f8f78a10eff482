"""Distributed ingestion on a local Ray cluster: same memories as one process, retries, resumes, races."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from icae_rag import indexing
from icae_rag.cli import main
from icae_rag.compressors import load_compressor
from icae_rag.data import load_squad
from icae_rag.data.chunking import sentence_boundaries
from icae_rag.errors import IcaeRagError, InvalidInputError
from icae_rag.io import read_tensors
from icae_rag.stores import MemoryKey, open_store

pytest.importorskip("lance")

KVZIP = "kvzip:decoder=tiny-llama,window_tokens=64"
RAW = "raw:decoder=tiny-llama"
ARTICLE = "Super_Bowl_50"  # one of the 13 held-out SQuAD articles
N = 200


@pytest.fixture(scope="module")
def nodes() -> list[str]:
    """200 sentence nodes of one held-out SQuAD article (v1.1 dev), in article order."""
    try:
        examples = load_squad("heldout")
    except IcaeRagError as e:
        pytest.skip(f"held-out SQuAD data not available: {e}")
    sentences: dict[str, None] = {}
    for paragraph in dict.fromkeys(e.context for e in examples if e.title == ARTICLE):
        cuts = [*sentence_boundaries(paragraph), len(paragraph)]
        for a, b in zip(cuts, cuts[1:], strict=False):
            if paragraph[a:b].strip():
                sentences.setdefault(paragraph[a:b].strip(), None)
    assert len(sentences) >= N
    return list(sentences)[:N]


def files_of(store, texts: list[str], compressor, tmp: Path) -> dict[MemoryKey, tuple]:
    """Each text's stored memory as (tensors, header), read back through its safetensors file."""
    out = {}
    for i, text in enumerate(texts):
        memory = store.get(text, compressor)
        assert memory is not None, f"node {i} is missing"
        memory.save(tmp / "m.safetensors")
        out[MemoryKey.of(text, compressor)] = read_tensors(tmp / "m.safetensors")
    return out


def same_files(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k][1] == b[k][1] and a[k][0].keys() == b[k][0].keys()
        and all(torch.equal(a[k][0][n], b[k][0][n]) for n in a[k][0]) for k in a)


@pytest.fixture(scope="module")
def two_actor_run(ray_cluster, nodes, tmp_path_factory):
    """The 200 nodes compressed (tiny kvzip) by 2 Ray actors into a Lance table, and by one process into a SqliteMemoryStore."""
    root = tmp_path_factory.mktemp("two_actors")
    local = indexing.index_local(nodes, KVZIP, root / "local-slots", batch_size=16, device="cpu", num_cpus=1)
    ray_run = indexing.index_with_ray(nodes, KVZIP, root / "memories.lance", concurrency=2, num_cpus=1,
                                         batch_size=16, device="cpu")
    return root, local, ray_run


def test_two_actors_give_exactly_the_memories_of_one_process(two_actor_run, nodes, tmp_path):
    root, local, ray_run = two_actor_run
    assert (local.written, ray_run.written) == (N, N) and ray_run.workers == 2
    compressor = load_compressor(KVZIP, device="cpu")
    with open_store(root / "local-slots") as one, open_store(root / "memories.lance") as two:
        assert len(one) == len(two) == N and two.row_count() == N
        assert same_files(files_of(one, nodes, compressor, tmp_path), files_of(two, nodes, compressor, tmp_path))


def test_a_second_run_writes_nothing(two_actor_run, nodes):
    root = two_actor_run[0]
    again = indexing.index_with_ray(nodes, KVZIP, root / "memories.lance", concurrency=2, batch_size=16,
                                       device="cpu")
    assert (again.texts, again.written) == (N, 0)
    assert open_store(root / "memories.lance").row_count() == N


def test_an_actor_killed_mid_run_is_retried_and_every_key_is_stored_once(ray_cluster, nodes, tmp_path, monkeypatch):
    marker = tmp_path / "died"

    class DiesOnce(indexing.CompressBatch):  # defined here, so Ray ships it to the actors by value
        def __call__(self, batch):
            out = super().__call__(batch)  # the batch is committed to the store...
            if not marker.exists():
                marker.touch()
                os._exit(1)  # ...then the actor dies before reporting it: Ray restarts it and retries
            return out

    monkeypatch.setattr(indexing, "CompressBatch", DiesOnce)
    report = indexing.index_with_ray(nodes, RAW, tmp_path / "m.lance", concurrency=2, batch_size=16, device="cpu")
    assert marker.exists(), "an actor died"
    store = open_store(tmp_path / "m.lance")
    assert report.texts == N and report.written < N, "the retried batch found its rows and wrote nothing"
    assert len(store) == N and store.row_count() == N, "every key once: no holes, no duplicates"


def test_two_ingestions_at_once_lose_nothing(ray_cluster, nodes, tmp_path):
    uri = tmp_path / "shared.lance"
    errors: list[BaseException] = []

    def ray_side() -> None:
        try:
            indexing.index_with_ray(nodes[:150], RAW, uri, concurrency=1, batch_size=10, device="cpu")
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    other = threading.Thread(target=ray_side)
    other.start()
    indexing.index_local(list(reversed(nodes[50:])), RAW, uri, batch_size=10, device="cpu")
    other.join(timeout=240)
    assert not other.is_alive() and not errors, errors
    store = open_store(uri)
    compressor = load_compressor(RAW, device="cpu")
    assert len(store) == N and all(store.has(t, compressor) for t in nodes)
    store.compact()
    assert store.row_count() == N
    assert store.compress_missing(nodes, compressor) == 0


def test_a_killed_ingestion_started_again_leaves_no_holes_and_no_duplicates(nodes, tmp_path):
    uri = str(tmp_path / "m.lance")
    docs = tmp_path / "nodes.json"
    docs.write_text(json.dumps(nodes), encoding="utf-8")
    code = ("import json, sys, torch; torch.set_num_threads(1); from icae_rag.indexing import index_local; "
            f"index_local(json.load(open(sys.argv[1])), {KVZIP!r}, sys.argv[2], batch_size=4, device='cpu')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(docs), uri], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = open_store(uri)
    deadline = time.time() + 120
    while store.row_count() == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = store.row_count()
    assert 0 < killed_at < N, "the writer was killed mid-run"
    again = indexing.index_local(nodes, KVZIP, uri, batch_size=4, device="cpu")
    assert again.written == N - killed_at and len(store) == store.row_count() == N


def test_cli_index_resumes_and_reports(tmp_path, nodes, capsys):
    docs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    docs[0].write_text(" ".join(nodes[:30]), encoding="utf-8")
    docs[1].write_text(" ".join(nodes[30:60]), encoding="utf-8")
    argv = ["index", *map(str, docs), "--store", str(tmp_path / "m.lance"), "--compressor", RAW,
            "--chunk-tokens", "64", "--device", "cpu", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["nodes"] > 2 and first["written"] == first["nodes"] and first["engine"] == "local"
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["nodes"], second["written"]) == (first["nodes"], 0)
    assert main(["index", str(tmp_path), "--store", str(tmp_path / "m.lance"), "--json"]) == 2


def test_options_are_checked():
    with pytest.raises(InvalidInputError, match="one worker"):
        indexing.index_local(["x"], RAW, "unused", concurrency=2)
    with pytest.raises(InvalidInputError, match="engine"):
        indexing.index(["x"], RAW, "unused", engine="spark")
    with pytest.raises(InvalidInputError, match="texts or LlamaIndex nodes"):
        indexing.texts_of([3])
    assert indexing.texts_of(["a", "b", "a"]) == ["a", "b"]
