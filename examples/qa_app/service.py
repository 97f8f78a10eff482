"""The app's state: documents, a FAISS index, a memory store, one compressor; persisted under a data dir.

Layout of the data directory::

    files/<id><ext>          uploaded files, under generated names
    icae_rag_slots/          SqliteMemoryStore: soft prompts precomputed at upload (unless --store names another store)
    index/CURRENT.json       {"version": "v-..."}: the one index version in use, switched atomically
    index/v-<uuid>/          LlamaIndex persist dir (FAISS, docstore) + documents.json

Concurrency: embedding calls hold `_embed_lock` (tokenizers are not thread-safe); every use of the
compressor holds its per-compressor lock from the LlamaIndex integration (shared with
`IcaeRagIngestion`); reading or changing the index holds `_index_lock`. Questions go through
one `AnswerBatcher`, which answers those that arrive together in one batch. An upload is checked at
once (name, type, text), then compressed, embedded and indexed by a background job whose progress
`job()` reports; that slow work runs outside `_index_lock`, so questions keep being answered from
what is indexed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, MetadataMode, QueryBundle
from llama_index.postprocessor.icae_rag import (
    IcaeRagIngestion,
    best_last,
    build_faiss_index,
    default_embed_model,
    load_faiss_index,
    node_text,
)

from icae_rag import DEFAULT_KIND
from icae_rag.decoding import build_prompt
from icae_rag.errors import CorruptFileError, InvalidInputError
from icae_rag.io import atomic_path, read_json, write_json

# MemoryCache holds the per-compressor lock that the app, the ingestion step and any LlamaIndex
# component using the same compressor object share; the AnswerBatcher decodes under that lock.
from icae_rag.serving import MemoryCache
from icae_rag.stores import SqliteMemoryStore, open_store
from icae_rag.text import check_text

from .batching import AnswerBatcher
from .documents import UploadError, extract_text, file_kind, safe_display_name

logger = logging.getLogger(__name__)

MODES = ("compressed", "raw")
CURRENT = "CURRENT.json"
SNIPPET_CHARS = 300
# Nodes compressed / embedded per hold of the compressor / embedding lock, so questions interleave with uploads.
INGEST_BATCH = 4
EMBED_BATCH = 16
# Metadata the decoder never reads: labels like "file_name: x.txt" were echoed in answers.
LLM_HIDDEN_METADATA = ["file_name", "doc_id"]
# Upload jobs kept for GET /api/jobs/<id> after they end (oldest finished ones dropped first).
MAX_FINISHED_JOBS = 100


class DuplicateDocumentError(UploadError):
    """The same text is already indexed."""

    status = 409


class UnknownJobError(InvalidInputError):
    """No upload job has this id (it never existed, or ended long ago)."""

    status = 404


@dataclass
class UploadJob:
    """One upload being compressed and indexed: its state and progress, as GET /api/jobs/<id> shows it."""

    id: str
    name: str
    status: str = "queued"  # queued, running, done or failed
    stage: str = "queued"  # queued, compressing, embedding, indexing, done, failed
    done: int = 0
    total: int = 0
    document: dict[str, Any] | None = None
    error: str | None = None
    error_status: int | None = None

    def public(self) -> dict[str, Any]:
        """The job as the API returns it."""
        out = {"id": self.id, "name": self.name, "status": self.status, "stage": self.stage,
               "progress": {"done": self.done, "total": self.total}}
        if self.document is not None:
            out["document"] = self.document
        if self.error is not None:
            out["error"], out["error_status"] = self.error, self.error_status
        return out


@dataclass
class Settings:
    """Everything configurable about the app (CLI flags map one to one)."""

    data_dir: Path = Path("qa_app_data")
    compressor: str = DEFAULT_KIND
    checkpoint: Path | None = None
    device: str = "auto"
    max_upload_bytes: int = 10 * 1024 * 1024
    top_k: int = 3
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    max_new_tokens: int = 64
    max_question_chars: int = 2000
    batch_window_ms: float = 50.0  # how long the first question waits for others to join its batch
    max_batch: int = 8
    store: str | None = None  # memory store path or URI (e.g. s3://bucket/memories.lance); None: in data_dir


@dataclass
class PreparedAnswer:
    """A question ready to stream: its sources, decoder positions and the token pieces as they come."""

    mode: str
    sources: list[dict[str, Any]]
    positions: int
    context_positions: int
    pieces: Iterator[str] = field(repr=False)


class QAService:
    """Documents in, streamed answers out; see the module docstring for layout and locking."""

    def __init__(self, settings: Settings, *, compressor: Any = None, embed_model: Any = None) -> None:
        """Load (or create) the data directory's index; `compressor`/`embed_model` override the defaults."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.files_dir = self.data_dir / "files"
        self.index_root = self.data_dir / "index"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.index_root.mkdir(parents=True, exist_ok=True)
        self.compressor = compressor if compressor is not None else load_app_compressor(settings)
        self.embed_model = embed_model if embed_model is not None else default_embed_model()
        self.store = open_store(settings.store) if settings.store else SqliteMemoryStore.in_persist_dir(self.data_dir)
        self.slots = MemoryCache(self.compressor, self.store)
        self.splitter = SentenceSplitter(chunk_size=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
        self.ingestion = IcaeRagIngestion(self.compressor, self.store)
        self._index_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self.batcher = AnswerBatcher(self.compressor, self.slots.lock, max_new_tokens=settings.max_new_tokens,
                                     window_ms=settings.batch_window_ms, max_batch=settings.max_batch)
        # One upload compresses at a time: compression is CPU-bound and shares the compressor lock.
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa-upload")
        self._jobs: dict[str, UploadJob] = {}
        self._jobs_lock = threading.Lock()
        self._index, self._documents = self._load_current()
        self._remove_stale_files()

    # --- state on disk ----------------------------------------------------------------------
    def _load_current(self) -> tuple[Any, list[dict[str, Any]]]:
        """The persisted index version and its documents, or an empty index if none exists yet."""
        pointer = self.index_root / CURRENT
        if not pointer.exists():
            index = build_faiss_index([], embed_model=self.embed_model,
                                      transformations=[self.splitter, self.ingestion])
            return index, []
        version = read_json(pointer).get("version", "")
        target = self.index_root / version
        if not version or "/" in version or not (target / "documents.json").is_file():
            raise CorruptFileError(f"{pointer} names a missing index version {version!r}: restore the data "
                                   "directory from a backup or delete its index/ directory to start empty")
        index = load_faiss_index(target, embed_model=self.embed_model,
                                 transformations=[self.splitter, self.ingestion])
        return index, list(read_json(target / "documents.json")["documents"])

    def _persist(self, documents: list[dict[str, Any]]) -> None:
        """Write the index and the document list to a new version dir, then switch CURRENT to it."""
        version = f"v-{uuid.uuid4().hex}"
        target = self.index_root / version
        try:
            self._index.storage_context.persist(persist_dir=target)
            write_json(target / "documents.json", {"documents": documents})
            write_json(self.index_root / CURRENT, {"version": version})  # the atomic switch
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        for old in self.index_root.iterdir():
            if old.is_dir() and old.name != version:
                shutil.rmtree(old, ignore_errors=True)

    def _remove_stale_files(self) -> None:
        """At startup: drop index versions and uploaded files left by an interrupted upload."""
        pointer = self.index_root / CURRENT
        current = read_json(pointer)["version"] if pointer.exists() else None
        for entry in self.index_root.iterdir():
            if entry.is_dir() and entry.name != current:
                shutil.rmtree(entry, ignore_errors=True)
        kept = {d["stored_as"] for d in self._documents}
        for entry in self.files_dir.iterdir():
            if entry.name not in kept:
                entry.unlink(missing_ok=True)

    # --- documents --------------------------------------------------------------------------
    def documents(self) -> list[dict[str, Any]]:
        """The indexed documents, oldest first (public fields only)."""
        with self._index_lock:
            return [public(d) for d in self._documents]

    def start_upload(self, filename: str | None, data: bytes) -> dict[str, Any]:
        """Check an upload now (UploadError with its HTTP status), then index it in a background job; the job."""
        name, ext, kind, text, sha = self._check_upload(filename, data)
        job = UploadJob(id=uuid.uuid4().hex, name=name)
        with self._jobs_lock:
            self._jobs[job.id] = job
            self._forget_old_jobs()
        self._uploads.submit(self._run_job, job, name, ext, kind, text, sha, data)
        return job.public()

    def job(self, job_id: str) -> dict[str, Any]:
        """An upload job's state and progress; UnknownJobError (404) for an unknown id."""
        with self._jobs_lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJobError(f"no upload job {job_id!r}: it never existed or ended long ago")
            return job.public()

    def _run_job(self, job: UploadJob, name: str, ext: str, kind: str, text: str, sha: str, data: bytes) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            with self._jobs_lock:
                job.status, job.stage, job.done, job.total = "running", stage, done, total

        try:
            record = self._index_upload(name, ext, kind, text, sha, data, progress)
        except Exception as e:  # reported through the job; the index is unchanged (see _index_upload)
            if not isinstance(e, InvalidInputError):
                logger.exception("indexing %s failed", name)
            with self._jobs_lock:
                job.status, job.stage = "failed", "failed"
                job.error = str(e) if isinstance(e, InvalidInputError) else (
                    f"indexing failed ({type(e).__name__}): see the server log")
                job.error_status = getattr(e, "status", 400) if isinstance(e, InvalidInputError) else 500
            return
        with self._jobs_lock:
            job.status, job.stage, job.document = "done", "done", record
            job.done = job.total

    def _forget_old_jobs(self) -> None:
        """Drop the oldest finished jobs past MAX_FINISHED_JOBS; the caller holds `_jobs_lock`."""
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        for old in finished[: max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self._jobs[old.id]

    def add_document(self, filename: str | None, data: bytes) -> dict[str, Any]:
        """Validate, store, compress and index one uploaded file now, in this thread (scripts and tests)."""
        return self._index_upload(*self._check_upload(filename, data), data, None)

    def _check_upload(self, filename: str | None, data: bytes) -> tuple[str, str, str, str, str]:
        """(name, extension, kind, text, sha256) of an acceptable upload; UploadError otherwise."""
        name = safe_display_name(filename)
        ext, kind = file_kind(name)
        text = extract_text(name, data)
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self._index_lock:
            self._check_duplicate(sha)  # early, to skip compressing; checked again before inserting
        return name, ext, kind, text, sha

    def _index_upload(self, name: str, ext: str, kind: str, text: str, sha: str, data: bytes,
                      progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
        """Store, compress and index one checked upload; the index on disk changes atomically.

        On any failure nothing already indexed is lost and the uploaded file is not kept.
        """
        record = {"id": uuid.uuid4().hex, "name": name, "kind": kind, "bytes": len(data), "chars": len(text),
                  "sha256": sha, "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        record["stored_as"] = record["id"] + ext  # generated: the user's name never reaches the filesystem
        stored = self.files_dir / record["stored_as"]
        with atomic_path(stored) as tmp:
            tmp.write_bytes(data)
        try:
            nodes = self._prepare_nodes(record, text, progress)
            record["chunks"] = len(nodes)
            if progress is not None:
                progress("indexing", 2 * len(nodes), 2 * len(nodes))
            with self._index_lock:
                self._check_duplicate(sha)
                try:
                    self._index.insert_nodes(nodes)
                    self._persist([*self._documents, record])
                except BaseException:
                    # FAISS cannot delete vectors: go back to the last persisted version instead.
                    self._index, self._documents = self._load_current()
                    raise
                self._documents.append(record)
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        logger.info("indexed %s as %s: %d chunks", name, record["stored_as"], len(nodes))
        return public(record)

    def _check_duplicate(self, sha: str) -> None:
        """DuplicateDocumentError if this text is indexed already; the caller holds `_index_lock`."""
        for d in self._documents:
            if d["sha256"] == sha:
                raise DuplicateDocumentError(f"this text is already indexed as {d['name']!r}")

    def _prepare_nodes(self, record: dict[str, Any], text: str,
                       progress: Callable[[str, int, int], None] | None = None) -> list[BaseNode]:
        """Chunks of the text with their soft prompts precomputed into the memory store and their embeddings.

        `progress(stage, done, total)` counts steps: one per node compressed, one per node embedded.
        """
        doc = Document(text=text, id_=record["id"], metadata={"file_name": record["name"], "doc_id": record["id"]},
                       excluded_llm_metadata_keys=LLM_HIDDEN_METADATA, excluded_embed_metadata_keys=["doc_id"])
        nodes = list(self.splitter([doc]))
        report = progress or (lambda stage, done, total: None)
        total = 2 * len(nodes)
        report("compressing", 0, total)
        for start in range(0, len(nodes), INGEST_BATCH):
            self.ingestion(nodes[start:start + INGEST_BATCH])
            report("compressing", min(start + INGEST_BATCH, len(nodes)), total)
        for start in range(0, len(nodes), EMBED_BATCH):
            batch = nodes[start:start + EMBED_BATCH]
            contents = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in batch]
            with self._embed_lock:
                embeddings = self.embed_model.get_text_embedding_batch(contents)
            for node, embedding in zip(batch, embeddings, strict=True):
                node.embedding = embedding
            report("embedding", len(nodes) + start + len(batch), total)
        return nodes

    # --- questions --------------------------------------------------------------------------
    def prepare_answer(self, question: Any, mode: Any) -> PreparedAnswer:
        """Retrieve the passages for a question and start decoding; raises InvalidInputError on bad input."""
        question = self.check_question(question)
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {list(MODES)}, got {mode!r}")
        with self.batcher.incoming():  # a batch being collected waits for this question
            return self._prepare(question, mode)

    def _prepare(self, question: str, mode: str) -> PreparedAnswer:
        """Retrieve, then submit to the batcher (see prepare_answer)."""
        with self._embed_lock:
            embedding = self.embed_model.get_query_embedding(question)
        with self._index_lock:
            if not self._documents:
                raise InvalidInputError("no documents are indexed yet: upload one first")
            retriever = self._index.as_retriever(similarity_top_k=self.settings.top_k)
            hits = retriever.retrieve(QueryBundle(query_str=question, embedding=embedding))
        pairs = [(h, text) for h in hits if (text := node_text(h.node, quiet=True)) is not None]
        hits, text_of = [h for h, _ in pairs], {id(h): text for h, text in pairs}
        # The decoder reads the best passage last, next to the question; the sources list stays best first.
        texts = [text_of[id(h)] for h in best_last(hits)]
        # The same retrieved nodes either way: their soft prompts from the memory store, or their text.
        contexts = self.slots.resolve(texts).prompts if mode == "compressed" else texts
        with self.slots.lock:
            prompt = build_prompt(self.compressor, contexts, question=question)
        pieces = self.batcher.submit(question, contexts)
        sources = [{"file": h.node.metadata.get("file_name", "?"), "doc_id": h.node.metadata.get("doc_id"),
                    "score": None if h.score is None else round(float(h.score), 4),
                    "snippet": _snippet(h.node.get_content(metadata_mode=MetadataMode.NONE))} for h in hits]
        return PreparedAnswer(mode, sources, prompt.positions, prompt.context_positions, pieces)

    def check_question(self, question: Any) -> str:
        """The stripped question, or InvalidInputError if it is missing, empty or too long."""
        if not isinstance(question, str):  # missing from the JSON body, or not a string
            raise InvalidInputError("the question is empty: type a question")
        question = check_text(question, what="question").strip()
        if len(question) > self.settings.max_question_chars:
            raise InvalidInputError(f"the question is longer than {self.settings.max_question_chars} characters")
        return question

    def info(self) -> dict[str, Any]:
        """What the page shows about the configuration."""
        c = self.compressor
        return {"compressor": c.kind, "trained": bool(c.trained), "version": c.version, "decoder": c.decoder.name,
                "top_k": self.settings.top_k, "max_new_tokens": self.settings.max_new_tokens,
                "max_upload_bytes": self.settings.max_upload_bytes, "modes": list(MODES)}

    def index_size(self) -> tuple[int, int]:
        """(vectors in FAISS, nodes in the docstore): equal when the index is consistent."""
        with self._index_lock:
            vectors = self._index.vector_store.client.ntotal
            return int(vectors), len(self._index.docstore.docs)

    def close(self) -> None:
        """Finish the running upload (queued ones are dropped: upload them again) and the queued
        questions, then close the memory store."""
        self._uploads.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()
        self.store.close()


def load_app_compressor(settings: Settings) -> Any:
    """The compressor the settings name: a checkpoint directory if given (of the right kind), else the kind."""
    from icae_rag import load_compressor

    if settings.checkpoint is None:
        return load_compressor(settings.compressor, device=settings.device)
    compressor = load_compressor(settings.checkpoint, device=settings.device)
    if compressor.kind != settings.compressor:
        raise InvalidInputError(f"{settings.checkpoint} is a {compressor.kind} checkpoint, but --compressor is "
                                f"{settings.compressor}: pass --compressor {compressor.kind}")
    return compressor


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A document record without its internal fields."""
    return {k: v for k, v in record.items() if k not in ("sha256", "stored_as")}


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS].rstrip() + "…"
