"""One compressor serving many threads: `MemoryCache` (its lock, recent memories, the store) and `TokenStream`.

ICAE switches its LoRA adapter off while decoding, so compressing and decoding with one compressor
object must never overlap: every user of that object (the LlamaIndex components, the QA app) takes
`MemoryCache(compressor).lock`, one lock per compressor object.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .errors import InvalidInputError
from .memories.soft_prompt import text_sha256
from .stores.base import MemoryKey, compressor_identity

if TYPE_CHECKING:
    from .compressors.base import Compressor
    from .memories.base import Memory
    from .stores.base import MemoryStore

__all__ = ["RECENT_ENTRIES", "Fitted", "MemoryCache", "Resolved", "TokenStream"]

logger = logging.getLogger(__name__)

RECENT_ENTRIES = 128  # memories kept in memory per compressor (about 0.6 MB each for a 1k-token ICAE text)


@dataclass
class _Shared:
    """What every MemoryCache of one compressor object shares."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    recent: OrderedDict = field(default_factory=OrderedDict)  # MemoryKey -> Memory, oldest first


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class Resolved(NamedTuple):
    """Memories in the order asked for, their keys, and how many texts were compressed just now."""

    memories: list[Memory]
    keys: list[MemoryKey]
    compressed: int

    @property
    def prompts(self) -> list[Memory]:
        """Deprecated 0.1 name of `memories` (they may be KV memories, not soft prompts); removed in 0.3."""
        warnings.warn("Resolved.prompts is deprecated, use Resolved.memories (removed in 0.3)",
                      DeprecationWarning, stacklevel=2)
        return self.memories


class Fitted(NamedTuple):
    """A text kept within a budget: its memory's key (None: read as raw text), decoder positions, source tokens."""

    key: MemoryKey | None
    positions: int
    source_tokens: int


class MemoryCache:
    """A compressor and its optional memory store: memories from recent use, else the store, else compressed.

    Every MemoryCache of the same compressor object shares one lock and one table of recent memories,
    so a memory one component just made is found by the next (store or not).
    """

    def __init__(self, compressor: Compressor, store: MemoryStore | None = None) -> None:
        """Serve `compressor`, keeping its memories in `store` when one is given."""
        self.compressor = compressor
        self.store = store
        with _SHARED_LOCK:
            self._shared = _SHARED.setdefault(compressor, _Shared())

    @property
    def lock(self) -> threading.RLock:
        """The lock every use of this compressor object holds."""
        return self._shared.lock

    def identity(self) -> tuple[str, str, str]:
        """(kind, version, backbone id) of the compressor now."""
        return compressor_identity(self.compressor)

    def resolve(self, texts: Sequence[str], *, batch_size: int = 8) -> Resolved:
        """One memory per text; misses are compressed in batches (and stored when there is a store)."""
        with self.lock:
            identity = self.identity()  # once: an ICAE version hashes the weights
            keys = [MemoryKey(text_sha256(t), *identity) for t in texts]
            recent = self._shared.recent
            found = {k: recent[k] for k in keys if k in recent}
            todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
            compressed = 0
            if todo:
                if self.store is not None:
                    before = self.store.stats.misses
                    made = self.store.get_or_compress(list(todo.values()), self.compressor, batch_size=batch_size)
                    compressed = self.store.stats.misses - before
                else:
                    made = self.compressor.compress_many(list(todo.values()), batch_size=batch_size)
                    compressed = len(todo)
                found.update(zip(todo, made, strict=True))
            for k in keys:
                recent[k] = found[k]
                recent.move_to_end(k)
            while len(recent) > RECENT_ENTRIES:
                recent.popitem(last=False)
            return Resolved([found[k] for k in keys], keys, compressed)

    def fit(self, texts: Sequence[str], *, keep_raw: int = 0, max_positions: int | None = None,
            batch_size: int = 8) -> tuple[list[Fitted | None], int]:
        """Texts, best first, within `max_positions` decoder positions (None: no cap); and how many
        texts were compressed just now.

        The first `keep_raw` texts stay raw while they fit, else they are compressed; the others are
        compressed. A compressed text that does not fit is dropped (None).
        """
        if keep_raw < 0:
            raise InvalidInputError(f"keep_raw must be >= 0, got {keep_raw}")
        first_soft = min(keep_raw, len(texts))
        resolved = self.resolve(texts[first_soft:], batch_size=batch_size)
        memories = {first_soft + j: pair for j, pair in enumerate(zip(resolved.memories, resolved.keys, strict=True))}
        compressed, used, out = resolved.compressed, 0, []
        for i, text in enumerate(texts):
            if i < keep_raw:
                n = self.count_tokens(text)
                if max_positions is None or used + n <= max_positions:
                    out.append(Fitted(None, n, n))
                    used += n
                    continue
                logger.info("text %d: %d raw tokens exceed the remaining budget; compressing it instead", i, n)
                one = self.resolve([text], batch_size=batch_size)
                compressed += one.compressed
                memories[i] = (one.memories[0], one.keys[0])
            memory, key = memories[i]
            if max_positions is None or used + memory.num_positions <= max_positions:
                out.append(Fitted(key, memory.num_positions, memory.source_tokens))
                used += memory.num_positions
            else:
                logger.info("text %d: %d soft tokens exceed the remaining budget of %d; dropped",
                            i, memory.num_positions, max_positions - used)
                out.append(None)
        if texts and all(f is None for f in out):
            logger.warning("max_positions=%s is smaller than every text's memory: no context is left", max_positions)
        return out, compressed

    def precompute(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False,
                   leads: Sequence[str | None] | None = None) -> int:
        """Put the memories of `texts` (encoded after `leads`, if given) into the store, not into
        recent memory; returns how many were compressed."""
        if self.store is None:
            raise InvalidInputError("precomputing memories needs a memory store to keep them in")
        with self.lock:
            before = self.store.stats.misses
            self.store.get_or_compress(texts, self.compressor, batch_size=batch_size, progress=progress, leads=leads)
            return self.store.stats.misses - before

    def count_tokens(self, text: str) -> int:
        """Decoder tokens of a raw text."""
        with self.lock:
            return len(self.compressor.tokenize(text))


_DONE = object()


class _Failure(NamedTuple):
    error: BaseException


class TokenStream:
    """Runs `make()` (a token iterator) in a worker thread holding `lock`; read it with `tokens()` or `atokens()`.

    Decoding starts at once, so the first token is ready early. Closing the consumer generator stops
    decoding after the current token.
    """

    def __init__(self, make: Callable[[], Iterator[str]], lock: threading.RLock) -> None:
        """Start decoding `make()` in a daemon thread."""
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(make, lock), daemon=True, name="icae-rag-stream").start()

    def _run(self, make: Callable[[], Iterator[str]], lock: threading.RLock) -> None:
        try:
            with lock:
                pieces = make()
                try:
                    for piece in pieces:
                        if self._stop.is_set():
                            break
                        self._queue.put(piece)
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()
        except BaseException as e:  # handed to the consumer, which re-raises it in its own thread
            self._queue.put(_Failure(e))
        finally:
            self._queue.put(_DONE)

    def tokens(self, default: str | None = None) -> Generator[str, None, None]:
        """The answer's text pieces as they are decoded; `default`, if given, when the decoder yields none."""
        empty = True
        try:
            for item in iter(self._queue.get, _DONE):
                if isinstance(item, _Failure):
                    raise item.error
                empty = False
                yield item
        finally:
            self._stop.set()
        if empty and default is not None:
            yield default

    async def atokens(self, default: str | None = None) -> AsyncGenerator[str, None]:
        """The same, without blocking the event loop."""
        pieces = self.tokens(default)
        try:
            while (piece := await asyncio.to_thread(next, pieces, _DONE)) is not _DONE:
                yield piece
        finally:
            # Not pieces.close(): a cancelled read may still be running it in its thread.
            self._stop.set()
