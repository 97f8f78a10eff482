"""Uploads: check a file at once, then store it, compress and embed its chunks, and index them.

The uploaded bytes go under a generated name in ``<data dir>/files/`` (the user's name never reaches
the filesystem). Each chunk's memory is precomputed into the memory store by `IcaeRagIngestion`, so
questions read it from there. Compressing and embedding take their locks per small batch, so
questions keep being answered while a document is indexed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core import Document
from llama_index.core.schema import BaseNode, MetadataMode

from icae_rag.io import atomic_path

from .documents import extract_text, file_kind, safe_display_name
from .index_store import IndexStore, public
from .jobs import Progress

logger = logging.getLogger(__name__)

# Nodes compressed / embedded per hold of the compressor / embedding lock, so questions interleave with uploads.
INGEST_BATCH = 4
EMBED_BATCH = 16
# Metadata the decoder never reads: labels like "file_name: x.txt" were echoed in answers.
LLM_HIDDEN_METADATA = ["file_name", "doc_id"]


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that passed the checks: its display name, extension, kind, text and the text's sha256."""

    name: str
    ext: str
    kind: str
    text: str
    sha256: str
    data: bytes


class Uploads:
    """Checks uploads and indexes them: file on disk, memories in the store, nodes in the index."""

    def __init__(self, index: IndexStore, files_dir: Path, *, splitter: Any, ingestion: Any, embed_model: Any,
                 embed_lock: threading.Lock) -> None:
        """`ingestion` precomputes memories (an `IcaeRagIngestion`); `embed_lock` guards the embedding model."""
        self.index = index
        self.files_dir = files_dir
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.splitter = splitter
        self.ingestion = ingestion
        self.embed_model = embed_model
        self.embed_lock = embed_lock

    def check(self, filename: str | None, data: bytes) -> CheckedUpload:
        """The upload if acceptable (name, type, text, not indexed yet); UploadError with its HTTP status otherwise."""
        name = safe_display_name(filename)
        ext, kind = file_kind(name)
        text = extract_text(name, data)
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.index.check_duplicate(sha)  # early, to skip compressing; checked again before inserting
        return CheckedUpload(name, ext, kind, text, sha, data)

    def add(self, upload: CheckedUpload, progress: Progress | None = None) -> dict[str, Any]:
        """Store, compress and index one checked upload; the index on disk changes atomically.

        On any failure nothing already indexed is lost and the uploaded file is not kept.
        """
        record = {"id": uuid.uuid4().hex, "name": upload.name, "kind": upload.kind, "bytes": len(upload.data),
                  "chars": len(upload.text), "sha256": upload.sha256,
                  "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        record["stored_as"] = record["id"] + upload.ext  # generated: the user's name never reaches the filesystem
        stored = self.files_dir / record["stored_as"]
        with atomic_path(stored) as tmp:
            tmp.write_bytes(upload.data)
        try:
            nodes = self.prepare_nodes(record, upload.text, progress)
            record["chunks"] = len(nodes)
            if progress is not None:
                progress("indexing", 2 * len(nodes), 2 * len(nodes))
            self.index.add(nodes, record)
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        logger.info("indexed %s as %s: %d chunks", upload.name, record["stored_as"], len(nodes))
        return public(record)

    def prepare_nodes(self, record: dict[str, Any], text: str, progress: Progress | None = None) -> list[BaseNode]:
        """Chunks of the text with their memories precomputed into the memory store and their embeddings.

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
            with self.embed_lock:
                embeddings = self.embed_model.get_text_embedding_batch(contents)
            for node, embedding in zip(batch, embeddings, strict=True):
                node.embedding = embedding
            report("embedding", len(nodes) + start + len(batch), total)
        return nodes
