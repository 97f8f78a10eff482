"""The app's FAISS index and its document list, persisted as versions and switched atomically.

Layout under ``<data dir>/index/``::

    CURRENT.json    {"version": "v-..."}: the one index version in use, switched atomically
    v-<uuid>/       LlamaIndex persist dir (FAISS, docstore) + documents.json

A new version is written whole before CURRENT.json names it, so a crash leaves the old version in
use; versions CURRENT.json does not name are removed (after a switch, and at startup).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.postprocessor.icae_rag import build_faiss_index, load_faiss_index

from icae_rag.errors import CorruptFileError, InvalidInputError
from icae_rag.io import read_json, write_json

from .documents import UploadError

CURRENT = "CURRENT.json"


class DuplicateDocumentError(UploadError):
    """The same text is already indexed."""

    status = 409


class IndexStore:
    """The index in use and its documents (records, oldest first); every read or change holds `lock`."""

    def __init__(self, root: Path, *, embed_model: Any, transformations: list[Any]) -> None:
        """Load the persisted version under `root`, or start an empty index if there is none."""
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self._embed_model = embed_model
        self._transformations = transformations
        self.index, self.documents = self._load_current()

    def _load_current(self) -> tuple[Any, list[dict[str, Any]]]:
        """The persisted index version and its documents, or an empty index if none exists yet."""
        pointer = self.root / CURRENT
        if not pointer.exists():
            index = build_faiss_index([], embed_model=self._embed_model, transformations=self._transformations)
            return index, []
        version = read_json(pointer).get("version", "")
        target = self.root / version
        if not version or "/" in version or not (target / "documents.json").is_file():
            raise CorruptFileError(f"{pointer} names a missing index version {version!r}: restore the data "
                                   "directory from a backup or delete its index/ directory to start empty")
        index = load_faiss_index(target, embed_model=self._embed_model, transformations=self._transformations)
        return index, list(read_json(target / "documents.json")["documents"])

    def _persist(self, documents: list[dict[str, Any]]) -> None:
        """Write the index and the document list to a new version dir, then switch CURRENT to it."""
        version = f"v-{uuid.uuid4().hex}"
        target = self.root / version
        try:
            self.index.storage_context.persist(persist_dir=target)
            write_json(target / "documents.json", {"documents": documents})
            write_json(self.root / CURRENT, {"version": version})  # the atomic switch
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        for old in self.root.iterdir():
            if old.is_dir() and old.name != version:
                shutil.rmtree(old, ignore_errors=True)

    def remove_stale(self, files_dir: Path) -> None:
        """At startup: drop index versions and uploaded files left by an interrupted upload."""
        pointer = self.root / CURRENT
        current = read_json(pointer)["version"] if pointer.exists() else None
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name != current:
                shutil.rmtree(entry, ignore_errors=True)
        kept = {d["stored_as"] for d in self.documents}
        for entry in files_dir.iterdir():
            if entry.name not in kept:
                entry.unlink(missing_ok=True)

    def public_documents(self) -> list[dict[str, Any]]:
        """The indexed documents, oldest first (public fields only)."""
        with self.lock:
            return [public(d) for d in self.documents]

    def check_duplicate(self, sha: str) -> None:
        """DuplicateDocumentError if this text is indexed already."""
        with self.lock:
            self._check_duplicate(sha)

    def _check_duplicate(self, sha: str) -> None:
        # The caller holds `lock`.
        for d in self.documents:
            if d["sha256"] == sha:
                raise DuplicateDocumentError(f"this text is already indexed as {d['name']!r}")

    def add(self, nodes: list[BaseNode], record: dict[str, Any]) -> None:
        """Insert a document's prepared nodes and persist; on any failure the last persisted version is back."""
        with self.lock:
            self._check_duplicate(record["sha256"])  # again: another upload of the text may have won
            try:
                self.index.insert_nodes(nodes)
                self._persist([*self.documents, record])
            except BaseException:
                # FAISS cannot delete vectors: go back to the last persisted version instead.
                self.index, self.documents = self._load_current()
                raise
            self.documents.append(record)

    def retrieve(self, question: str, embedding: list[float], top_k: int) -> list[NodeWithScore]:
        """The `top_k` nodes nearest a question's embedding, best first; InvalidInputError if none are indexed."""
        with self.lock:
            if not self.documents:
                raise InvalidInputError("no documents are indexed yet: upload one first")
            retriever = self.index.as_retriever(similarity_top_k=top_k)
            return retriever.retrieve(QueryBundle(query_str=question, embedding=embedding))

    def size(self) -> tuple[int, int]:
        """(vectors in FAISS, nodes in the docstore): equal when the index is consistent."""
        with self.lock:
            vectors = self.index.vector_store.client.ntotal
            return int(vectors), len(self.index.docstore.docs)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A document record without its internal fields."""
    return {k: v for k, v in record.items() if k not in ("sha256", "stored_as")}
