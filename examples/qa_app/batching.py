"""Concurrent questions answered together: a queue that collects questions for a short window and
answers them in one batch (the library's `stream_many`), so eight users wait about as long as one.

Every answer of a batch streams: each decoding step's new text goes to its own user at once, so the
first token arrives after the batch's prefill, not after its last token. One worker thread does all
decoding, holding the compressor's lock (shared with uploads, which compress under it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

_END = object()
# The longest a batch waits for more questions, in batch windows (see `_run`).
MAX_WINDOWS = 20
# How often the collecting worker looks again whether questions are still on their way.
POLL_SECONDS = 0.01


@dataclass
class _Request:
    question: str
    contexts: Sequence[Any]
    pieces: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


@dataclass
class _Failure:
    error: BaseException


class AnswerBatcher:
    """Answers questions in batches of up to `max_batch`, collected while questions are on their way
    (`incoming`) or until `window_ms` pass without a new one (at most MAX_WINDOWS windows in all)."""

    def __init__(self, compressor: Any, lock: Any, *, max_new_tokens: int, window_ms: float = 50.0,
                 max_batch: int = 8) -> None:
        """Start the worker thread; `lock` guards every use of `compressor`."""
        self.compressor = compressor
        self.lock = lock
        self.max_new_tokens = max_new_tokens
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.batch_sizes: list[int] = []  # every batch answered, for the logs and the tests
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._incoming = 0  # questions received but not yet submitted (being embedded and retrieved)
        self._incoming_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="qa-answer-batcher")
        self._thread.start()

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a question on its way (retrieval, then `submit`): a batch being collected waits for it."""
        with self._incoming_lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._incoming_lock:
                self._incoming -= 1

    def submit(self, question: str, contexts: Sequence[Any]) -> Iterator[str]:
        """Queue a question; iterate the result for its answer's text pieces (errors re-raised there)."""
        if self._closed.is_set():
            raise RuntimeError("the answer batcher is closed")
        request = _Request(question, list(contexts))
        self._queue.put(request)
        return self._pieces(request)

    def close(self) -> None:
        """Stop the worker once the questions already queued are answered."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout=60)

    @staticmethod
    def _pieces(request: _Request) -> Iterator[str]:
        while (item := request.pieces.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stop = [first], False
            # Questions sent together reach the queue one by one (each is embedded and retrieved
            # first), so the batch stays open while any is on its way (`incoming`) or until `window`
            # passes with no new one; at most MAX_WINDOWS windows in all.
            last = opened = time.monotonic()
            cap = opened + MAX_WINDOWS * self.window
            while len(batch) < self.max_batch:
                now = time.monotonic()
                until = cap if self._incoming else min(last + self.window, cap)
                if now >= until:
                    break
                try:
                    item = self._queue.get(timeout=min(until - now, POLL_SECONDS))
                except queue.Empty:
                    continue
                if item is None:
                    stop = True
                    break
                batch.append(item)
                last = time.monotonic()
            logger.info("answering %d question(s) together, collected over %.0f ms", len(batch),
                        1000 * (time.monotonic() - opened))
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[_Request]) -> None:
        self.batch_sizes.append(len(batch))
        start, first = time.monotonic(), None
        try:
            with self.lock:
                waited = time.monotonic() - start
                for i, piece in self.compressor.stream_many([r.question for r in batch], [r.contexts for r in batch],
                                                            max_new_tokens=self.max_new_tokens):
                    if first is None:
                        first = time.monotonic() - start
                        logger.info("first piece of the batch of %d after %.0f ms (%.0f ms waiting for the model)",
                                    len(batch), 1000 * first, 1000 * waited)
                    batch[i].pieces.put(piece)
        except Exception as e:  # each waiting request reports it in its own stream
            logger.exception("answering a batch of %d failed", len(batch))
            for request in batch:
                request.pieces.put(_Failure(e))
            return
        for request in batch:
            request.pieces.put(_END)
