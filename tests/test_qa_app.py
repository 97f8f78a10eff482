"""The document QA web app (examples/qa_app) on tiny random models: API, bad input, restarts, concurrency."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from qa_app_helpers import HashEmbedding, Hold, answer_text, events, serve

from conftest import spy_compress
from examples.qa_app import Settings, create_app
from examples.qa_app import index_store as index_store_module
from examples.qa_app.app import parse_args
from examples.qa_app.documents import (
    UploadError,
    UploadTooLargeError,
    extract_text,
    read_limited,
    safe_display_name,
)
from icae_rag import DEFAULT_KIND

APOLLO = ("The Apollo program was the third United States human spaceflight program. Apollo 11 landed the first "
          "humans on the Moon in July 1969. Neil Armstrong and Buzz Aldrin walked on the lunar surface while "
          "Michael Collins stayed in orbit.")
RHINE = ("The Rhine rises in the Swiss Alps and flows north through Germany and the Netherlands to the North "
         "Sea. Barges carry coal and grain along the river between Basel and Rotterdam.")
PHOTO = ("Photosynthesis converts light energy into chemical energy stored in glucose. Plants release oxygen "
         "as a by-product of splitting water inside their chloroplasts.")


@pytest.fixture(scope="module")
def compressor(_icae_proto):
    """One tiny untrained ICAE for the module (copied: the app's lock and caches are per object)."""
    return copy.deepcopy(_icae_proto)


def make_app(data_dir: Path, compressor, embed_model=None, **settings):
    """The app on tiny models over `data_dir`."""
    return create_app(Settings(data_dir=data_dir, **settings), compressor=compressor,
                      embed_model=embed_model or HashEmbedding())


@dataclass
class Uploaded:
    """An upload's outcome in the old synchronous shape: 201 + {"document"} once its job is done, the
    immediate refusal (4xx), or the failed job's status + {"error"}."""

    status_code: int
    body: dict
    job: dict | None = None

    def json(self) -> dict:
        return self.body

    @property
    def text(self) -> str:
        return json.dumps(self.body)


def start_upload(client, name: str, data: bytes | str):
    """POST a file's bytes to /api/documents: the response (202 + job, or a refusal)."""
    body = data.encode() if isinstance(data, str) else data
    return client.post("/api/documents", params={"filename": name}, content=body)


def wait_for_job(client, job_id: str, timeout: float = 120.0) -> tuple[dict, list[dict]]:
    """Poll GET /api/jobs/<id> until the job ends: (final job, every state seen)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()["job"]
        seen.append(job)
        if job["status"] in ("done", "failed"):
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"upload job {job_id} did not end in {timeout} s: {seen[-1]}")


def upload(client, name: str, data: bytes | str) -> Uploaded:
    """Upload a file and wait for its job to end."""
    r = start_upload(client, name, data)
    if r.status_code != 202:
        return Uploaded(r.status_code, r.json())
    job, _ = wait_for_job(client, r.json()["job"]["id"])
    if job["status"] == "done":
        return Uploaded(201, {"document": job["document"]}, job)
    return Uploaded(job["error_status"], {"error": job["error"]}, job)


def ask(client, question, mode="compressed") -> tuple[int, list[dict] | dict]:
    """(status, events) for a streamed answer, or (status, error body)."""
    r = client.post("/api/ask", json={"question": question, "mode": mode})
    return r.status_code, (events(r.text) if r.status_code == 200 else r.json())


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream shows `text` (offsets computed, so pypdf reads it cleanly)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# --- documents: text extraction and names ---------------------------------------------------------

def test_extract_text_per_kind():
    assert extract_text("a.txt", "\ufeffhello world\n".encode()) == "hello world"
    assert extract_text("a.md", b"# Title\n\nbody") == "# Title\n\nbody"
    page = (b"<html><head><title>Guide</title><style>p{color:red}</style><script>alert('x')</script></head>"
            b"<body><p>First&nbsp;para</p><div>Second <b>bold</b></div><noscript>enable js</noscript></body></html>")
    text = extract_text("a.html", page)
    assert "Guide" in text and "First para" in text and "Second bold" in text
    assert "alert" not in text and "color" not in text and "enable js" not in text
    assert "Apollo landed" in extract_text("a.pdf", minimal_pdf("Apollo landed in 1969"))


@pytest.mark.parametrize("name,data,message", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"   \n\t ", "contains no text"),
    ("nul.txt", b"abc\x00\x01\x02def", "binary"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
    ("bad.pdf", b"%PDF-1.4\n1 0 obj garbage", "malformed PDF"),
    ("text.pdf", b"just some text, not a pdf", "not a PDF"),
    ("plain.html", b"no tags in here at all", "not HTML"),
    ("scripts.html", b"<script>var a = 1;</script><style>p {}</style>", "contains no text"),
    ("binary.html", b"<p>\x00\xff\xfe</p>", "binary"),
])
def test_extract_text_rejects_bad_files(name, data, message):
    with pytest.raises(UploadError, match=message):
        extract_text(name, data)


@pytest.mark.parametrize("raw,expected", [("notes.txt", "notes.txt"), ("sub/dir/notes.md", "notes.md"),
                                          ("C-drive report.pdf", "C-drive report.pdf"), ("a..b.txt", "a..b.txt")])
def test_safe_display_name_keeps_the_basename(raw, expected):
    assert safe_display_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", None, "../evil.txt", "a/../../evil.txt", "..\\evil.txt", "/etc/x.txt",
                                 "\\\\server\\share\\x.txt", "C:\\x.txt", "c:x.txt", "dir/", ".", "a\x00.txt",
                                 "x" * 300 + ".txt"])
def test_safe_display_name_rejects_paths(raw):
    with pytest.raises(UploadError):
        safe_display_name(raw)


def test_read_limited_stops_reading_at_the_limit():
    consumed = []

    async def long_body():
        for _ in range(100):
            consumed.append(1)
            yield b"x" * 1000

    with pytest.raises(UploadTooLargeError, match="limit of 4.88 KB"):
        asyncio.run(read_limited(long_body(), 5000))
    assert len(consumed) == 6
    assert asyncio.run(read_limited(_chunks([b"ab", b"cd"]), 4)) == b"abcd"


async def _chunks(items):
    for item in items:
        yield item


# --- the API ----------------------------------------------------------------------------------------

def test_page_and_static_files_are_served(tmp_path, compressor):
    with TestClient(make_app(tmp_path, compressor)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/static/app.js" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/static/app.css").status_code == 200
        missing = client.get("/static/service.py")
        assert missing.status_code == 404 and "error" in missing.json()
        info = client.get("/api/info").json()
        assert info["compressor"] == "icae" and info["trained"] is False and info["max_upload_bytes"] == 10 << 20


def test_upload_then_ask_streams_an_answer_with_sources(tmp_path, compressor, monkeypatch):
    with TestClient(make_app(tmp_path, compressor, top_k=1)) as client:
        for name, text in (("apollo.txt", APOLLO), ("rhine.md", RHINE), ("photo.html", f"<p>{PHOTO}</p>")):
            r = upload(client, name, text)
            assert r.status_code == 201, r.text
            assert r.json()["document"]["name"] == name and r.json()["document"]["chunks"] >= 1
        assert [d["name"] for d in client.get("/api/documents").json()["documents"]] == [
            "apollo.txt", "rhine.md", "photo.html"]

        calls = spy_compress(compressor, monkeypatch)
        results = {}
        for mode in ("compressed", "raw"):
            status, evs = ask(client, "Which river flows from the Swiss Alps to the North Sea?", mode)
            assert status == 200
            assert evs[0]["type"] == "sources" and evs[-1]["type"] == "done"
            assert all(e["type"] == "token" for e in evs[1:-1])
            assert [s["file"] for s in evs[0]["sources"]] == ["rhine.md"]
            assert "Swiss Alps" in evs[0]["sources"][0]["snippet"]
            done = evs[-1]
            assert done["mode"] == mode and done["pieces"] == len(evs) - 2
            assert done["positions"] > done["context_positions"] > 0
            if done["pieces"]:
                assert 0 < done["ttft"] <= done["seconds"]
            results[mode] = done
        # Soft prompts were made at upload: answering compressed compresses nothing.
        assert calls == []
        # Same passage: its soft prompt takes fewer decoder positions than its text (ratio 4).
        assert results["compressed"]["context_positions"] < results["raw"]["context_positions"]


def test_the_best_passage_is_read_last_and_listed_first(tmp_path, compressor, monkeypatch):
    rows: list[list] = []
    original = compressor.stream_many

    def spy(questions, contexts, **kwargs):
        rows.extend(contexts)
        return original(questions, contexts, **kwargs)

    with TestClient(make_app(tmp_path, compressor, top_k=2)) as client:
        upload(client, "apollo.txt", APOLLO)
        upload(client, "rhine.txt", RHINE)
        monkeypatch.setattr(compressor, "stream_many", spy)
        status, evs = ask(client, "Who walked on the Moon?", "raw")
    sources = evs[0]["sources"]
    assert status == 200 and len(sources) == 2 and sources[0]["score"] >= sources[1]["score"]
    assert len(rows) == 1 and len(rows[0]) == 2
    read = [" ".join(text.split()) for text in rows[0]]  # as the snippets are
    assert sources[0]["snippet"][:30] in read[-1] and sources[1]["snippet"][:30] in read[0]


def test_compressed_and_raw_modes_read_the_same_passages_differently(tmp_path, compressor):
    with TestClient(make_app(tmp_path, compressor, top_k=2)) as client:
        upload(client, "apollo.txt", APOLLO)
        upload(client, "rhine.txt", RHINE)
        service = client.app.state.service
        raw_tokens = sum(len(compressor.tokenize(t)) for t in service_texts(service))
        _, compressed = ask(client, "Who walked on the Moon?", "compressed")
        _, raw = ask(client, "Who walked on the Moon?", "raw")
        assert compressed[0]["sources"] == raw[0]["sources"]
        assert raw[-1]["context_positions"] >= raw_tokens  # the passages' text, plus blank-line separators
        assert compressed[-1]["context_positions"] < raw_tokens


def service_texts(service) -> list[str]:
    """What the decoder reads for every indexed node in raw mode."""
    from llama_index.postprocessor.icae_rag import node_text

    return [node_text(n) for n in service.index_store.index.docstore.docs.values()]


def test_bad_uploads_and_questions_are_refused_and_lose_nothing(tmp_path, compressor):
    with TestClient(make_app(tmp_path, compressor, max_upload_bytes=2000)) as client:
        assert ask(client, "Anything?") == (400, {"error": "no documents are indexed yet: upload one first"})
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        service = client.app.state.service
        before = (client.get("/api/documents").json(), service.index_size(), sorted(service.files_dir.iterdir()))

        bad = [("empty.txt", b"", 400, "empty"), ("nul.txt", b"\x00\x01binary", 400, "binary"),
               ("x.txt", b"\xff\xfe\xfa", 400, "UTF-8"), ("run.exe", b"MZ...", 415, "unsupported file type"),
               ("noext", b"text", 415, "unsupported"), ("bad.pdf", b"%PDF-1.7\n%%garbage", 400, "PDF"),
               ("page.html", b"<script>x()</script>", 400, "no text"), ("big.txt", b"a" * 2001, 413, "limit"),
               ("apollo copy.txt", APOLLO.encode(), 409, "already indexed")]
        for name, data, status, message in bad:
            r = upload(client, name, data)
            assert r.status_code == status, (name, r.text)
            assert message in r.json()["error"], (name, r.json())

        # No Content-Length (chunked): the limit is enforced while reading.
        def chunks():
            for _ in range(10):
                yield b"b" * 500

        r = client.post("/api/documents", params={"filename": "stream.txt"}, content=chunks())
        assert r.status_code == 413 and "limit" in r.json()["error"]

        for body, message in ((json.dumps({"question": "  "}), "empty"), (json.dumps({"mode": "raw"}), "empty"),
                              (json.dumps({"question": "Q?", "mode": "zip"}), "mode"), ("not json", "JSON"),
                              (json.dumps(["Q?"]), "JSON object"), (json.dumps({"question": "x" * 2001}), "longer"),
                              (json.dumps({"question": 3}), "empty")):
            r = client.post("/api/ask", content=body)
            assert r.status_code == 400 and message in r.json()["error"], (body, r.text)

        after = (client.get("/api/documents").json(), service.index_size(), sorted(service.files_dir.iterdir()))
        assert after == before
        assert ask(client, "When did Apollo 11 land?")[0] == 200


@pytest.mark.parametrize("name", ["../evil.txt", "../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "", " ",
                                  "C:\\evil.txt", "a/../evil.txt"])
def test_upload_names_never_write_outside_the_data_dir(tmp_path, compressor, name):
    data_dir = tmp_path / "deep" / "data"
    with TestClient(make_app(data_dir, compressor)) as client:
        r = upload(client, name, "Evil text that must not be written anywhere.")
        assert r.status_code == 400 and r.json()["error"]
        assert client.get("/api/documents").json()["documents"] == []
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "icae_rag_memories" not in p.parts]
    assert not [p for p in written if "evil" in p.name]
    assert list((data_dir / "files").iterdir()) == []


def test_uploads_are_stored_under_generated_names(tmp_path, compressor):
    with TestClient(make_app(tmp_path, compressor)) as client:
        r = upload(client, "reports/2024/q1 notes.txt", APOLLO)
        assert r.status_code == 201 and r.json()["document"]["name"] == "q1 notes.txt"
        files = [p.name for p in (tmp_path / "files").iterdir()]
        assert len(files) == 1 and re.fullmatch(r"[0-9a-f]{32}\.txt", files[0])
        assert (tmp_path / "files" / files[0]).read_text() == APOLLO
        assert "stored_as" not in r.json()["document"] and "sha256" not in r.json()["document"]


def test_restart_reloads_documents_index_and_memories(tmp_path, compressor, monkeypatch):
    pdf = minimal_pdf("The Eiffel Tower was completed in 1889 in Paris.")
    with TestClient(make_app(tmp_path, compressor)) as client:
        upload(client, "apollo.txt", APOLLO)
        upload(client, "tower.pdf", pdf)
        docs = client.get("/api/documents").json()
        size = client.app.state.service.index_size()
        _, first = ask(client, "When was the Eiffel Tower completed?")

    calls = spy_compress(compressor, monkeypatch)
    with TestClient(make_app(tmp_path, compressor)) as client:
        assert client.get("/api/documents").json() == docs
        assert client.app.state.service.index_size() == size
        status, again = ask(client, "When was the Eiffel Tower completed?")
        assert status == 200 and again[0]["sources"] == first[0]["sources"]
        assert again[0]["sources"][0]["file"] == "tower.pdf"
        assert answer_text(again) == answer_text(first)  # greedy decoding of the same memories
        assert calls == []  # memories came from the persisted memory store
        assert upload(client, "rhine.txt", RHINE).status_code == 201
    with TestClient(make_app(tmp_path, compressor)) as client:
        assert [d["name"] for d in client.get("/api/documents").json()["documents"]] == [
            "apollo.txt", "tower.pdf", "rhine.txt"]
    versions = [p.name for p in (tmp_path / "index").iterdir() if p.is_dir()]
    assert len(versions) == 1  # old index versions are cleaned up



def test_a_data_dir_from_0_1_keeps_its_memories(tmp_path, compressor, monkeypatch):
    # 0.1 kept the memory store in icae_rag_slots/; 0.2 names it icae_rag_memories/ and opens the old one in place.
    with TestClient(make_app(tmp_path, compressor)) as client:
        upload(client, "apollo.txt", APOLLO)
        _, first = ask(client, "Who walked on the Moon?")
    (tmp_path / "icae_rag_memories").rename(tmp_path / "icae_rag_slots")

    calls = spy_compress(compressor, monkeypatch)
    with TestClient(make_app(tmp_path, compressor)) as client:
        assert client.app.state.service.store.path == tmp_path / "icae_rag_slots"
        status, again = ask(client, "Who walked on the Moon?")
        assert status == 200 and answer_text(again) == answer_text(first)
        assert calls == []  # the memories came from the 0.1 directory
    assert not (tmp_path / "icae_rag_memories").exists()

def test_a_failed_persist_keeps_the_previous_index(tmp_path, compressor, monkeypatch):
    with TestClient(make_app(tmp_path, compressor), raise_server_exceptions=False) as client:
        upload(client, "apollo.txt", APOLLO)
        service = client.app.state.service
        before = (client.get("/api/documents").json(), service.index_size(), sorted(service.files_dir.iterdir()))
        original = index_store_module.write_json

        def failing(path, data):
            if Path(path).name == index_store_module.CURRENT:
                raise OSError("No space left on device")
            return original(path, data)

        monkeypatch.setattr(index_store_module, "write_json", failing)
        r = upload(client, "rhine.txt", RHINE)
        assert r.status_code == 500 and "error" in r.json()
        monkeypatch.setattr(index_store_module, "write_json", original)

        assert (client.get("/api/documents").json(), service.index_size(),
                sorted(service.files_dir.iterdir())) == before
        assert [p.name for p in (tmp_path / "index").iterdir() if p.is_dir()] == [
            json.loads((tmp_path / "index" / "CURRENT.json").read_text())["version"]]
        status, evs = ask(client, "Where does the Rhine rise?")
        assert status == 200 and {s["file"] for s in evs[0]["sources"]} == {"apollo.txt"}
        assert upload(client, "rhine.txt", RHINE).status_code == 201  # and it can be uploaded again
    with TestClient(make_app(tmp_path, compressor)) as client:
        assert [d["name"] for d in client.get("/api/documents").json()["documents"]] == ["apollo.txt", "rhine.txt"]


# --- a real server ----------------------------------------------------------------------------------

def test_answers_are_streamed_as_they_are_decoded(tmp_path, compressor, monkeypatch):
    # Decoding is held after its first piece: that token must reach the client while decoding goes on.
    app = make_app(tmp_path, compressor)
    original = compressor.stream_many
    released, finished = threading.Event(), threading.Event()

    def gated_stream(*args, **kwargs):
        try:
            for n, piece in enumerate(original(*args, **kwargs)):
                yield piece
                if n == 0:
                    released.wait(30)
        finally:
            finished.set()

    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        monkeypatch.setattr(compressor, "stream_many", gated_stream)
        kinds, decoding_at_first_token = [], None
        with client.stream("POST", "/api/ask", json={"question": "Who walked on the Moon?"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            for line in r.iter_lines():
                if line.strip():
                    kinds.append(json.loads(line)["type"])
                    if kinds[-1] == "token" and decoding_at_first_token is None:
                        decoding_at_first_token = not finished.is_set()
                        released.set()
    assert kinds[0] == "sources" and kinds[-1] == "done" and kinds.count("token") >= 5
    # Tokens reach the client while decoding goes on, not in one piece at the end.
    assert decoding_at_first_token is True


def test_questions_are_answered_while_a_document_uploads(tmp_path, compressor):
    embed = HashEmbedding()
    app = make_app(tmp_path, compressor, embed_model=embed, chunk_tokens=32, chunk_overlap=0)
    big = " ".join(f"Paragraph {i} is about canal locks, barges and river number {i}." for i in range(120))
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        service = app.state.service
        # The next upload waits after its first batch of nodes (between batches, as it lets questions in).
        hold = Hold(after=1)
        service.ingestion = hold.wrap(service.ingestion)
        results: dict[str, int] = {}

        def do_upload(name, text):
            results[name] = upload(client, name, text).status_code

        def do_ask(i):
            status, evs = ask(client, f"Who walked on the Moon? ({i})", "raw" if i % 2 else "compressed")
            results[f"q{i}"] = status if evs[-1]["type"] == "done" else -1

        uploader = threading.Thread(target=do_upload, args=("canals.txt", big))
        uploader.start()
        try:
            assert hold.wait_until_holding(), "the upload never got past its first batch"
            askers = [threading.Thread(target=do_ask, args=(i,)) for i in range(3)]
            for t in askers:
                t.start()
            for t in askers:
                t.join(timeout=60)
            # Every question was answered while the upload was still embedding.
            assert results == {"q0": 200, "q1": 200, "q2": 200} and uploader.is_alive()
        finally:
            hold.release()
        uploader.join(timeout=120)
        assert results["canals.txt"] == 201

        # Concurrent uploads: all indexed, the index stays consistent.
        threads = [threading.Thread(target=do_upload, args=(f"doc{i}.txt", f"{text} ({i})"))
                   for i, text in enumerate((RHINE, PHOTO, APOLLO))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [results[f"doc{i}.txt"] for i in range(3)] == [201, 201, 201]
        vectors, nodes = app.state.service.index_size()
        docs = client.get("/api/documents").json()["documents"]
        assert len(docs) == 5 and vectors == nodes == sum(d["chunks"] for d in docs)
    with TestClient(make_app(tmp_path, compressor)) as client:
        assert len(client.get("/api/documents").json()["documents"]) == 5
        assert client.app.state.service.index_size() == (vectors, nodes)


def test_command_line_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("QA_APP_DATA_DIR", raising=False)
    settings, host, port = parse_args([])
    assert (host, port, settings.compressor, settings.checkpoint) == ("127.0.0.1", 8000, DEFAULT_KIND, None)
    assert settings.data_dir == Path("qa_app_data") and settings.max_upload_bytes == 10 << 20
    monkeypatch.setenv("QA_APP_DATA_DIR", str(tmp_path))
    settings, _, _ = parse_args(["--compressor", "e2llm", "--max-upload-mb", "1", "--port", "9000"])
    assert settings.data_dir == tmp_path and settings.compressor == "e2llm" and settings.max_upload_bytes == 1 << 20
    with pytest.raises(SystemExit):
        parse_args(["--compressor", "raw"])
    with pytest.raises(SystemExit):
        parse_args(["--top-k", "0"])


# --- uploads as jobs, batched questions, metadata kept from the decoder --------------------------

def test_upload_returns_at_once_and_its_job_reports_progress(tmp_path, compressor):
    embed = HashEmbedding()
    app = make_app(tmp_path, compressor, embed_model=embed, chunk_tokens=32, chunk_overlap=0)
    big = " ".join(f"Paragraph {i} is about canal locks, barges and river number {i}." for i in range(80))
    with TestClient(app) as client:
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        service = app.state.service
        # The job cannot finish before these holds are released: its 202 came before the work was done.
        compressing = Hold(after=1, wait=30)  # after the first batch of nodes is compressed
        service.ingestion = compressing.wrap(service.ingestion)
        embedding = embed.hold(after=16, wait=30)  # after the first batch of nodes is embedded
        try:
            r = start_upload(client, "canals.txt", big)
            assert r.status_code == 202
            job = r.json()["job"]
            assert job["status"] in ("queued", "running") and r.headers["location"] == f"/api/jobs/{job['id']}"
            assert compressing.wait_until_holding()
            held = [client.get(f"/api/jobs/{job['id']}").json()["job"]]
            assert (held[0]["status"], held[0]["stage"]) == ("running", "compressing")
            # Questions are answered from what is indexed while the job runs.
            status, evs = ask(client, "Who walked on the Moon?", "raw")
            assert status == 200 and {s["file"] for s in evs[0]["sources"]} == {"apollo.txt"}
            compressing.release()
            assert embedding.wait_until_holding()
            held.append(client.get(f"/api/jobs/{job['id']}").json()["job"])
            assert (held[1]["status"], held[1]["stage"]) == ("running", "embedding")
        finally:
            compressing.release()
            embedding.release()
        final, seen = wait_for_job(client, job["id"])
        seen = [*held, *seen]
        assert final["status"] == "done" and final["document"]["name"] == "canals.txt"
        assert final["progress"]["done"] == final["progress"]["total"] == 2 * final["document"]["chunks"]
        stages = [j["stage"] for j in seen]
        assert "embedding" in stages and stages[-1] == "done"
        dones = [j["progress"]["done"] for j in seen]
        assert dones == sorted(dones)
        assert [d["name"] for d in client.get("/api/documents").json()["documents"]] == ["apollo.txt", "canals.txt"]
        missing = client.get("/api/jobs/nope")
        assert missing.status_code == 404 and "no upload job" in missing.json()["error"]


def test_bad_files_are_refused_at_once_not_in_a_job(tmp_path, compressor):
    with TestClient(make_app(tmp_path, compressor)) as client:
        r = start_upload(client, "nul.txt", b"\x00" * 100)
        assert r.status_code == 400 and "binary" in r.json()["error"]
        assert start_upload(client, "a.exe", b"MZ").status_code == 415


def test_concurrent_questions_are_answered_in_one_batch(tmp_path, compressor, monkeypatch):
    app = make_app(tmp_path, compressor, batch_window_ms=400, max_new_tokens=12)
    batches, late = [], []
    original = compressor.stream_many
    questions_asked = [f"Question {i}: where does the Rhine rise?" for i in range(4)]
    first_token = {q: threading.Event() for q in questions_asked}

    def spy(questions, contexts, **kwargs):
        # After each answer's first piece, decoding waits until that token reached its client.
        batches.append(list(questions))
        started = set()
        for i, piece in original(questions, contexts, **kwargs):
            yield i, piece
            if i not in started:
                started.add(i)
                if not first_token[questions[i]].wait(10):
                    late.append(questions[i])

    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        assert upload(client, "rhine.txt", RHINE).status_code == 201
        monkeypatch.setattr(compressor, "stream_many", spy)
        results = {}

        def do_ask(i):
            with client.stream("POST", "/api/ask", json={"question": questions_asked[i],
                                                         "mode": "raw" if i % 2 else "compressed"}) as r:
                evs = []
                for line in r.iter_lines():
                    if line.strip():
                        evs.append(json.loads(line))
                        if evs[-1]["type"] == "token":
                            first_token[questions_asked[i]].set()
            results[i] = r.status_code, evs

        threads = [threading.Thread(target=do_ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(status == 200 and evs[-1]["type"] == "done" for status, evs in results.values())
    # Nothing lost: every question was answered, in batches larger than one.
    assert sorted(q for batch in batches for q in batch) == sorted(questions_asked)
    assert max(len(b) for b in batches) > 1 and max(app.state.service.batcher.batch_sizes) > 1
    # Each answer of a batch streams: its first token reached its client while the batch was still decoding.
    assert late == []


def test_a_failed_batch_is_reported_in_every_stream(tmp_path, compressor, monkeypatch):
    app = make_app(tmp_path, compressor, batch_window_ms=400)

    def broken(*args, **kwargs):
        raise RuntimeError("decoder on fire")

    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        monkeypatch.setattr(compressor, "stream_many", broken)
        results = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(client, f"Q{i}?"))) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    for status, evs in results.values():
        assert status == 200 and evs[-1]["type"] == "error" and "decoder on fire" in evs[-1]["error"]


def test_metadata_labels_stay_out_of_the_decoder_text(tmp_path, compressor, monkeypatch):
    seen: list[str] = []
    original = compressor.stream_many

    def spy(questions, contexts, **kwargs):
        seen.extend(c for row in contexts for c in row if isinstance(c, str))
        return original(questions, contexts, **kwargs)

    with TestClient(make_app(tmp_path, compressor)) as client:
        assert upload(client, "apollo.txt", APOLLO).status_code == 201
        monkeypatch.setattr(compressor, "stream_many", spy)
        status, evs = ask(client, "Who walked on the Moon?", "raw")
        assert status == 200 and evs[0]["sources"][0]["file"] == "apollo.txt"  # still shown to the user
    assert seen and not any("file_name" in text or "apollo.txt" in text for text in seen)


def test_a_batch_waits_for_questions_still_being_retrieved():
    from examples.qa_app.batching import AnswerBatcher

    class Fake:
        def __init__(self):
            self.batches = []

        def stream_many(self, questions, contexts, **kwargs):
            self.batches.append(list(questions))
            yield from ((i, f"answer {q}") for i, q in enumerate(questions))

    fake = Fake()
    batcher = AnswerBatcher(fake, threading.Lock(), max_new_tokens=4, window_ms=20)
    try:
        first = batcher.submit("a", [])
        with batcher.incoming():  # retrieval of "b" takes 5 windows: the batch waits for it
            time.sleep(0.1)
            second = batcher.submit("b", [])
        assert list(first) == ["answer a"] and list(second) == ["answer b"]
        assert fake.batches == [["a", "b"]]
        alone = batcher.submit("c", [])  # nobody on the way: answered after one window
        assert list(alone) == ["answer c"] and fake.batches[-1] == ["c"]
    finally:
        batcher.close()
