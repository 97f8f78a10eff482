"""The app's state, composed from one module per job; persisted under a data dir.

Layout of the data directory::

    files/<id><ext>          uploaded files, under generated names (`uploads`)
    icae_rag_memories/       SqliteMemoryStore: memories precomputed at upload (unless --store names another
                             store); a directory from 0.1, icae_rag_slots/, is used in its place if present
    index/CURRENT.json       {"version": "v-..."}: the one index version in use, switched atomically (`index_store`)
    index/v-<uuid>/          LlamaIndex persist dir (FAISS, docstore) + documents.json

Concurrency: embedding calls hold `embed_lock` (tokenizers are not thread-safe); every use of the
compressor holds its per-compressor lock from the LlamaIndex integration (shared with
`IcaeRagIngestion`); reading or changing the index holds the index store's lock. Questions go
through one `AnswerBatcher` (`answering`), which answers those that arrive together in one batch. An
upload is checked at once (name, type, text), then compressed, embedded and indexed by a background
job (`jobs`) whose progress `job()` reports; that slow work runs outside the index lock, so questions
keep being answered from what is indexed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import IcaeRagIngestion, default_embed_model

from icae_rag import DEFAULT_KIND
from icae_rag.errors import InvalidInputError

# MemoryCache holds the per-compressor lock that the app, the ingestion step and any LlamaIndex
# component using the same compressor object share; the AnswerBatcher decodes under that lock.
from icae_rag.serving import MemoryCache
from icae_rag.stores import SqliteMemoryStore, open_store

from .answering import MODES, Answering, PreparedAnswer
from .batching import AnswerBatcher
from .index_store import IndexStore
from .jobs import UploadJobs
from .uploads import Uploads

__all__ = ["PreparedAnswer", "QAService", "Settings", "load_app_compressor"]


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


class QAService:
    """Documents in, streamed answers out; see the module docstring for layout and locking."""

    def __init__(self, settings: Settings, *, compressor: Any = None, embed_model: Any = None) -> None:
        """Load (or create) the data directory's index; `compressor`/`embed_model` override the defaults."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.files_dir = self.data_dir / "files"
        self.index_root = self.data_dir / "index"
        self.compressor = compressor if compressor is not None else load_app_compressor(settings)
        self.embed_model = embed_model if embed_model is not None else default_embed_model()
        self.store = open_store(settings.store) if settings.store else SqliteMemoryStore.in_persist_dir(self.data_dir)
        self.memories = MemoryCache(self.compressor, self.store)
        self.splitter = SentenceSplitter(chunk_size=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
        ingestion = IcaeRagIngestion(self.compressor, self.store)
        embed_lock = threading.Lock()
        self.index_store = IndexStore(self.index_root, embed_model=self.embed_model,
                                      transformations=[self.splitter, ingestion])
        self.uploads = Uploads(self.index_store, self.files_dir, splitter=self.splitter, ingestion=ingestion,
                               embed_model=self.embed_model, embed_lock=embed_lock)
        self.jobs = UploadJobs()
        self.batcher = AnswerBatcher(self.compressor, self.memories.lock, max_new_tokens=settings.max_new_tokens,
                                     window_ms=settings.batch_window_ms, max_batch=settings.max_batch)
        self.answering = Answering(self.compressor, self.index_store, self.memories, self.batcher,
                                   embed_model=self.embed_model, embed_lock=embed_lock, top_k=settings.top_k,
                                   max_question_chars=settings.max_question_chars)
        self.index_store.remove_stale(self.files_dir)

    @property
    def ingestion(self) -> Any:
        """The step that precomputes an upload's memories into the store (an `IcaeRagIngestion`)."""
        return self.uploads.ingestion

    @ingestion.setter
    def ingestion(self, step: Any) -> None:
        # Tests wrap the step to hold an upload between batches.
        self.uploads.ingestion = step

    # --- documents --------------------------------------------------------------------------
    def documents(self) -> list[dict[str, Any]]:
        """The indexed documents, oldest first (public fields only)."""
        return self.index_store.public_documents()

    def start_upload(self, filename: str | None, data: bytes) -> dict[str, Any]:
        """Check an upload now (UploadError with its HTTP status), then index it in a background job; the job."""
        upload = self.uploads.check(filename, data)
        return self.jobs.start(upload.name, lambda progress: self.uploads.add(upload, progress))

    def job(self, job_id: str) -> dict[str, Any]:
        """An upload job's state and progress; UnknownJobError (404) for an unknown id."""
        return self.jobs.get(job_id)

    def add_document(self, filename: str | None, data: bytes) -> dict[str, Any]:
        """Validate, store, compress and index one uploaded file now, in this thread (scripts and tests)."""
        return self.uploads.add(self.uploads.check(filename, data))

    # --- questions --------------------------------------------------------------------------
    def prepare_answer(self, question: Any, mode: Any) -> PreparedAnswer:
        """Retrieve the passages for a question and start decoding; raises InvalidInputError on bad input."""
        return self.answering.prepare(question, mode)

    def check_question(self, question: Any) -> str:
        """The stripped question, or InvalidInputError if it is missing, empty or too long."""
        return self.answering.check_question(question)

    def info(self) -> dict[str, Any]:
        """What the page shows about the configuration."""
        c = self.compressor
        return {"compressor": c.kind, "trained": bool(c.trained), "version": c.version, "decoder": c.decoder.name,
                "top_k": self.settings.top_k, "max_new_tokens": self.settings.max_new_tokens,
                "max_upload_bytes": self.settings.max_upload_bytes, "modes": list(MODES)}

    def index_size(self) -> tuple[int, int]:
        """(vectors in FAISS, nodes in the docstore): equal when the index is consistent."""
        return self.index_store.size()

    def close(self) -> None:
        """Finish the running upload (queued ones are dropped: upload them again) and the queued
        questions, then close the memory store."""
        self.jobs.close()
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
