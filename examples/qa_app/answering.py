"""Answering: retrieve a question's passages, then decode from their memories (or their raw text).

Both modes read the same retrieved nodes: "compressed" reads their memories from the memory cache
(filled at upload), "raw" their text. Decoding goes through the `AnswerBatcher`, which answers
questions that arrive together in one batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.schema import MetadataMode
from llama_index.postprocessor.icae_rag import best_last, node_text

from icae_rag.decoding import build_prompt
from icae_rag.errors import InvalidInputError
from icae_rag.serving import MemoryCache
from icae_rag.text import check_text

from .batching import AnswerBatcher
from .index_store import IndexStore

MODES = ("compressed", "raw")
SNIPPET_CHARS = 300


@dataclass
class PreparedAnswer:
    """A question ready to stream: its sources, decoder positions and the token pieces as they come."""

    mode: str
    sources: list[dict[str, Any]]
    positions: int
    context_positions: int
    pieces: Iterator[str] = field(repr=False)


class Answering:
    """Questions in, prepared answers out: checks the question, retrieves, and submits to the batcher."""

    def __init__(self, compressor: Any, index: IndexStore, memories: MemoryCache, batcher: AnswerBatcher, *,
                 embed_model: Any, embed_lock: threading.Lock, top_k: int, max_question_chars: int) -> None:
        """`memories` resolves passages to their memories and holds the compressor lock the batcher decodes under."""
        self.compressor = compressor
        self.index = index
        self.memories = memories
        self.batcher = batcher
        self.embed_model = embed_model
        self.embed_lock = embed_lock
        self.top_k = top_k
        self.max_question_chars = max_question_chars

    def prepare(self, question: Any, mode: Any) -> PreparedAnswer:
        """Retrieve the passages for a question and start decoding; raises InvalidInputError on bad input."""
        question = self.check_question(question)
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {list(MODES)}, got {mode!r}")
        with self.batcher.incoming():  # a batch being collected waits for this question
            return self._prepare(question, mode)

    def _prepare(self, question: str, mode: str) -> PreparedAnswer:
        """Retrieve, then submit to the batcher (see prepare)."""
        with self.embed_lock:
            embedding = self.embed_model.get_query_embedding(question)
        hits = self.index.retrieve(question, embedding, self.top_k)
        pairs = [(h, text) for h in hits if (text := node_text(h.node, quiet=True)) is not None]
        hits, text_of = [h for h, _ in pairs], {id(h): text for h, text in pairs}
        # The decoder reads the best passage last, next to the question; the sources list stays best first.
        texts = [text_of[id(h)] for h in best_last(hits)]
        # The same retrieved nodes either way: their memories from the memory store, or their text.
        contexts = self.memories.resolve(texts).memories if mode == "compressed" else texts
        with self.memories.lock:
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
        if len(question) > self.max_question_chars:
            raise InvalidInputError(f"the question is longer than {self.max_question_chars} characters")
        return question


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS].rstrip() + "…"
