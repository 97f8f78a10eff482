"""Shared pieces of the QA app tests: a deterministic test embedding, a real uvicorn server, NDJSON parsing."""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import BaseEmbedding

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is imported from the repository root
    sys.path.insert(0, str(ROOT))


class Hold:
    """A point where work waits, once `after` passes went through, until `release()`: a test holds an
    upload mid-way for as long as it needs (`wait_until_holding()`), with no clock in its checks."""

    def __init__(self, after: int = 0, wait: float = 60.0) -> None:
        self.after, self.wait, self.passes = after, wait, 0
        self.released, self.holding = threading.Event(), threading.Event()

    def enter(self) -> None:
        """Called by the held work: waits here (at most `wait` s) from the `after`-th pass on, until released."""
        if self.passes >= self.after and not self.released.is_set():
            self.holding.set()
            if not self.released.wait(self.wait):
                self.released.set()  # waited once in vain: the test fails on its own checks, the work goes on
        self.passes += 1

    def wrap(self, fn):
        """`fn`, entering this hold before each call."""
        def held(*args, **kwargs):
            self.enter()
            return fn(*args, **kwargs)
        return held

    def wait_until_holding(self, timeout: float = 60.0) -> bool:
        """Whether the work reached the hold within `timeout` seconds."""
        return self.holding.wait(timeout)

    def release(self) -> None:
        """Let held and later passes through."""
        self.released.set()


class HashEmbedding(BaseEmbedding):
    """Words hashed into `dim` buckets, L2-normalised: instant, deterministic, topical enough to retrieve by.

    `hold(after)` returns a `Hold` that document texts (not queries) enter before being embedded.
    """

    dim: int = 64
    _hold: Hold | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "HashEmbedding"

    def hold(self, after: int = 0, wait: float = 60.0) -> Hold:
        """From now on, document texts after the first `after` wait until the returned hold is released."""
        self._hold = Hold(after, wait)
        return self._hold

    def _vector(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            v[int(hashlib.sha1(word.encode()).hexdigest()[:8], 16) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        if self._hold is not None:
            self._hold.enter()
        return self._vector(text)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app, timeout: float = 60.0) -> Iterator[str]:
    """Run `app` under a real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="qa-app-server")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def events(text: str) -> list[dict]:
    """The NDJSON events of an /api/ask response body."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def answer_text(evs: list[dict]) -> str:
    """The streamed answer: the token pieces joined."""
    return "".join(e["text"] for e in evs if e["type"] == "token")
