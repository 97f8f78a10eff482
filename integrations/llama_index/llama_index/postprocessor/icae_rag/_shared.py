"""What the postprocessor, the synthesizer and the ingestion step share.

- `node_text`: the text a decoder reads for a node, with the documented fallbacks for nodes that
  carry no text or carry media.
- `SLOT_KEY`: the node-metadata key through which the postprocessor tells the synthesizer which
  soft prompt stands for a node (or that the node stays raw text). Tensors never go into metadata.
- `SlotCache`: a compressor plus its optional `SlotStore`, with a per-compressor lock and an
  in-memory table of recent soft prompts shared by every component that uses the same compressor
  object (so the synthesizer finds what the postprocessor just made, store or not).
- `UsesCompressor` / `SoftPromptComponent`: the `compressor` and `slot_store` properties of every
  component, and the fields and constructor the postprocessor and the ingestion step share.
- `TokenStream`: decodes in a worker thread that holds the compressor lock, consumed as a sync or
  async generator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseComponent, BaseNode, ImageNode, MetadataMode, Node

from icae_rag import DEFAULT_KIND
from icae_rag.errors import InvalidInputError

if TYPE_CHECKING:
    from icae_rag.compressors.base import Compressor
    from icae_rag.memory import Memory
    from icae_rag.slot_store import SlotKey, SlotStore

logger = logging.getLogger(__name__)

SLOT_KEY = "icae_rag_slot_key"
RAW = "raw"
RECENT_ENTRIES = 128  # soft prompts kept in memory per compressor (about 0.6 MB each for a 1k-token ICAE node)


def node_text(node: BaseNode, *, quiet: bool = False) -> str | None:
    """The text a decoder reads for `node` (its LLM-visible metadata included), or None.

    Fallbacks, logged as warnings (debug when `quiet`): a node whose own text is empty or
    whitespace gives None and is left out; a node carrying an image, audio or video gives its
    text only (icae-rag compresses text).
    """
    log = logger.debug if quiet else logger.warning
    if _has_media(node):
        log("node %s carries an image, audio or video: icae-rag reads only its text", node.node_id)
    if not node.get_content(metadata_mode=MetadataMode.NONE).strip():
        log("node %s has no text: it is left out of the context", node.node_id)
        return None
    return node.get_content(metadata_mode=MetadataMode.LLM)


def _has_media(node: BaseNode) -> bool:
    if isinstance(node, ImageNode):
        return True
    if isinstance(node, Node):
        return any(getattr(node, f"{kind}_resource", None) is not None for kind in ("image", "audio", "video"))
    return False


def mark(node: BaseNode, value: str) -> BaseNode:
    """A copy of `node` whose metadata records `value` under SLOT_KEY, hidden from the LLM and the embedder."""

    def hide(keys: list[str]) -> list[str]:
        return list(keys) if SLOT_KEY in keys else [*keys, SLOT_KEY]

    return node.model_copy(update={
        "metadata": {**node.metadata, SLOT_KEY: value},
        "excluded_llm_metadata_keys": hide(node.excluded_llm_metadata_keys),
        "excluded_embed_metadata_keys": hide(node.excluded_embed_metadata_keys),
    })


def load_compressor_arg(compressor: Any, device: str) -> tuple[Compressor, str]:
    """(compressor, name to serialise): an instance as is, else a kind or checkpoint dir loaded on `device`."""
    from icae_rag.compressors import Compressor, compressor_kinds, load_compressor

    if isinstance(compressor, Compressor):
        return compressor, compressor.label
    if compressor is None:
        compressor = DEFAULT_KIND
    if not isinstance(compressor, (str, os.PathLike)):
        raise InvalidInputError(
            f"compressor must be an icae_rag Compressor, a kind {compressor_kinds()} or a checkpoint "
            f"directory, got {type(compressor).__name__}")
    return load_compressor(compressor, device=device), os.fspath(compressor)


def open_store_arg(slot_store: Any) -> SlotStore | None:
    """A memory store (SlotStore, LanceMemoryStore) as is, a directory or store URI opened by `open_store`, or None."""
    from icae_rag.stores import MemoryStore, open_store

    if slot_store is None or isinstance(slot_store, MemoryStore):
        return slot_store
    if not isinstance(slot_store, (str, os.PathLike)):
        raise InvalidInputError(f"slot_store must be a SlotStore, a LanceMemoryStore, a directory path or a store URI, "
                                f"got {type(slot_store).__name__}")
    return open_store(slot_store)


@dataclass
class _Runtime:
    lock: threading.RLock = field(default_factory=threading.RLock)
    recent: OrderedDict = field(default_factory=OrderedDict)  # SlotKey -> Memory


_RUNTIMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RUNTIMES_LOCK = threading.Lock()


def _runtime(compressor: Compressor) -> _Runtime:
    with _RUNTIMES_LOCK:
        if compressor not in _RUNTIMES:
            _RUNTIMES[compressor] = _Runtime()
        return _RUNTIMES[compressor]


class Resolved(NamedTuple):
    """Soft prompts in the order asked for, their keys, and how many texts were compressed just now."""

    prompts: list[Memory]
    keys: list[SlotKey]
    compressed: int


class SlotCache:
    """A compressor and its optional SlotStore: soft prompts from memory, else the store, else compressed.

    Every use of the compressor goes through its lock: ICAE switches its LoRA adapter off while
    decoding, so compressing and decoding must never overlap.
    """

    def __init__(self, compressor: Compressor, store: SlotStore | None = None) -> None:
        self.compressor = compressor
        self.store = store
        self._runtime = _runtime(compressor)

    @property
    def lock(self) -> threading.RLock:
        """The lock every use of this compressor object holds."""
        return self._runtime.lock

    def identity(self) -> tuple[str, str, str]:
        """(kind, version, backbone id) of the compressor now."""
        from icae_rag.slot_store import compressor_identity

        return compressor_identity(self.compressor)

    def resolve(self, texts: Sequence[str], *, batch_size: int = 8) -> Resolved:
        """One soft prompt per text; misses are compressed in batches (and stored when there is a store)."""
        from icae_rag.slot_store import SlotKey
        from icae_rag.soft_prompt import text_sha256

        with self.lock:
            identity = self.identity()
            keys = [SlotKey(text_sha256(t), *identity) for t in texts]
            recent = self._runtime.recent
            found = {k: recent[k] for k in keys if k in recent}
            todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
            if todo:
                if self.store is not None:
                    before = self.store.stats.misses
                    made = self.store.get_or_compress(list(todo.values()), self.compressor, batch_size=batch_size)
                    compressed = self.store.stats.misses - before
                else:
                    made = self.compressor.compress_many(list(todo.values()), batch_size=batch_size)
                    compressed = len(todo)
                found.update(zip(todo, made, strict=True))
            else:
                compressed = 0
            for k in keys:
                recent[k] = found[k]
                recent.move_to_end(k)
            while len(recent) > RECENT_ENTRIES:
                recent.popitem(last=False)
            return Resolved([found[k] for k in keys], keys, compressed)

    def precompute(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False,
                   leads: Sequence[str | None] | None = None) -> int:
        """Put the soft prompts of `texts` (encoded after `leads`, if given) into the store, not into
        memory; returns how many were compressed."""
        if self.store is None:
            raise InvalidInputError("precomputing soft prompts needs a slot store to keep them in")
        with self.lock:
            before = self.store.stats.misses
            self.store.get_or_compress(texts, self.compressor, batch_size=batch_size, progress=progress, leads=leads)
            return self.store.stats.misses - before

    def count_tokens(self, text: str) -> int:
        """Decoder tokens of a raw text."""
        with self.lock:
            return len(self.compressor.tokenize(text))


class UsesCompressor:
    """The `compressor` and `slot_store` of a component that keeps them in a `SlotCache` (`_cache`)."""

    @property
    def compressor(self) -> Compressor:
        """The icae_rag Compressor in use."""
        return self._cache.compressor

    @property
    def slot_store(self) -> SlotStore | None:
        """The SlotStore in use, or None."""
        return self._cache.store


class SoftPromptComponent(UsesCompressor, BaseComponent):
    """Serialisable fields and construction of `SoftPromptCompressor` and `SoftPromptIngestion`."""

    needs_slot_store: ClassVar[bool] = False

    compressor_name: str = Field(
        default=DEFAULT_KIND, description="Compressor kind or checkpoint directory loaded when no instance is given.")
    device: str = Field(default="auto", description="Device the compressor is loaded on (auto, cpu, cuda, mps).")
    slot_store_dir: str | None = Field(default=None, description="Slot store directory, if any.")
    batch_size: int = Field(default=8, gt=0, description="Spans/chunks compressed per forward pass.")

    _cache: Any = PrivateAttr()

    def __init__(self, compressor: Any = None, slot_store: Any = None, **data: Any) -> None:
        """`compressor`: a Compressor, a kind or a checkpoint dir; `slot_store`: a SlotStore, a directory or None."""
        name = data.pop("compressor_name", None)
        store_dir = data.pop("slot_store_dir", None)
        store = open_store_arg(slot_store if slot_store is not None else store_dir)
        if store is None and self.needs_slot_store:
            raise InvalidInputError(f"{type(self).__name__} needs a slot store (a SlotStore or a directory) to write to")
        super().__init__(compressor_name=name or DEFAULT_KIND, slot_store_dir=None if store is None else str(store.path),
                         **data)
        loaded, name = load_compressor_arg(compressor if compressor is not None else name, self.device)
        self.compressor_name = name
        self._cache = SlotCache(loaded, store)


_DONE = object()


class _Failure(NamedTuple):
    error: BaseException


class TokenStream:
    """Runs `make()` (a token iterator) in a worker thread holding `lock`; read it with `tokens()` or `atokens()`.

    Decoding starts at once, so the first token is ready early. Closing the consumer generator stops
    decoding after the current token.
    """

    def __init__(self, make: Callable[[], Iterator[str]], lock: threading.RLock) -> None:
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

    def tokens(self) -> Generator[str, None, None]:
        """The answer's text pieces as they are decoded."""
        try:
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self._stop.set()

    async def atokens(self) -> AsyncGenerator[str, None]:
        """The same, without blocking the event loop."""
        try:
            while (item := await asyncio.to_thread(self._queue.get)) is not _DONE:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self._stop.set()
