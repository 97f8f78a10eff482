"""Index-time compression: texts (or LlamaIndex nodes) into a memory store, here or on a Ray cluster.

Both engines take the same arguments and do the same thing per batch of `batch_size` texts: skip
the texts whose key is in the store, compress the rest, write them in one store commit
(`MemoryStore.compress_missing`). So a second run writes nothing, and a killed run, started again,
writes only what is missing: no duplicates, no holes.

- `index_local`: one process, one compressor.
- `index_with_ray`: Ray Data, ``from_items(...).map_batches(CompressBatch, compute=ActorPoolStrategy(size=N),
  num_cpus=..., num_gpus=..., batch_size=...)``;
  each actor loads the compressor once and writes to the shared store itself (nothing but counts
  travels back). An actor that dies is restarted by Ray and its batch retried (Ray Data's actor-pool
  defaults, `max_restarts=-1` and `max_task_retries=-1`: passing other values through `map_batches`
  is deprecated in Ray 2.60, to be removed in 2.64). The retried batch skips what the dead actor had already committed.
  Because retries are unbounded, a node that kills its worker every time (e.g. out of memory)
  makes the run restart that worker until it is stopped: watch the log for restarts.

Every worker opens the store by URI, so it must be reachable from every machine: a Lance table on
an object store (``s3://bucket/memories.lance``) for a cluster; a local `SqliteMemoryStore` directory or
local ``.lance`` table for workers of one machine.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


@dataclass
class IndexReport:
    """What an ingestion did: distinct texts asked for, memories written now, time, engine, workers."""

    texts: int
    written: int
    seconds: float
    engine: str
    workers: int

    @property
    def nodes_per_second(self) -> float:
        """Distinct texts handled per wall-clock second (compressed or already there)."""
        return self.texts / self.seconds if self.seconds > 0 else 0.0


def read_documents(paths: Sequence[str | os.PathLike], *, chunk_tokens: int = 0,
                   compressor_spec: str | os.PathLike | None = None) -> list[str]:
    """UTF-8 text files as nodes: one per file, or sentence-packed chunks of at most `chunk_tokens`.

    Chunk sizes count tokens of the compressor's decoder, so `chunk_tokens` loads the compressor
    named by `compressor_spec` (on the CPU) in this process for its tokenizer.
    """
    from .data.readers import read_text_file

    files = [Path(p) for p in paths]
    for path in files:
        if path.is_dir():
            raise InvalidInputError(f"{path} is a directory: pass its files (e.g. {path}/*.txt)")
    texts = [text for text in (read_text_file(path) for path in files) if text.strip()]
    if not chunk_tokens:
        return texts
    if chunk_tokens < 0:
        raise InvalidInputError(f"chunk_tokens must be positive (or 0 for one node per file), got {chunk_tokens}")
    from .compressors import load_compressor
    from .data.chunking import sentence_chunks

    tokenizer = load_compressor(compressor_spec, device="cpu").decoder.tokenizer
    nodes: list[str] = []
    for text in texts:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for start, end in sentence_chunks(offsets, text, chunk_tokens):
            chunk = text[offsets[start][0]:offsets[end - 1][1]].strip()
            if chunk:
                nodes.append(chunk)
    return nodes


def texts_of(items: Iterable[Any]) -> list[str]:
    """Distinct texts to compress, in order: strings as they are, nodes by the text the synthesizer reads.

    A node is anything with LlamaIndex's ``get_content(metadata_mode=...)``; it is keyed by its
    LLM-visible content (as `IcaeRagIngestion` keys it), and skipped when its own text is empty.
    """
    out: dict[str, None] = {}
    for item in items:
        if isinstance(item, str):
            text = item
        elif callable(getattr(item, "get_content", None)):
            if not item.get_content(metadata_mode="none").strip():
                logger.debug("node %s has no text: skipped", getattr(item, "node_id", "?"))
                continue
            text = item.get_content(metadata_mode="llm")
        else:
            raise InvalidInputError(f"index takes texts or LlamaIndex nodes, got {type(item).__name__}")
        out.setdefault(text, None)
    return list(out)


class CompressBatch:
    """The Ray Data callable class: loads the compressor and opens the store once per actor."""

    def __init__(self, compressor_spec: str, store_uri: str, storage_options: dict[str, str] | None,
                 device: str, threads: int | None) -> None:
        """Load `compressor_spec` on `device` and open the store at `store_uri`."""
        import torch

        from .compressors import load_compressor
        from .stores import open_store

        if threads:
            torch.set_num_threads(threads)  # as many as the CPUs Ray reserved for this actor
        self.compressor = load_compressor(compressor_spec, device=device)
        self.store = open_store(store_uri, storage_options=storage_options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Compress and store the texts of `batch` missing from the store; one row of counts back."""
        import numpy as np

        texts = [str(t) for t in batch["text"]]
        written = self.store.compress_missing(texts, self.compressor)
        return {"texts": np.array([len(texts)]), "written": np.array([written])}


def _check_options(concurrency: int, batch_size: int) -> None:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidInputError(f"concurrency (workers) must be a positive integer, got {concurrency!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")


def index_local(items: Iterable[Any], compressor_spec: str | os.PathLike, store_uri: str | os.PathLike, *,
                concurrency: int = 1, num_cpus: float | None = None, num_gpus: float = 0,
                batch_size: int = DEFAULT_BATCH_SIZE, storage_options: dict[str, str] | None = None,
                device: str = "auto", progress: bool = False) -> IndexReport:
    """Compress the texts missing from the store in this process (`--engine local`); same arguments as `index_with_ray`.

    `num_cpus` sets torch's threads; `concurrency` must be 1 and `num_gpus` is unused (choose the
    GPU with `device`): more workers are `index_with_ray`'s job.
    """
    _check_options(concurrency, batch_size)
    if concurrency != 1:
        raise InvalidInputError(f"the local engine runs one worker, not {concurrency}: use engine 'ray' for more")
    from tqdm.auto import tqdm

    texts = texts_of(items)
    start = time.perf_counter()
    worker = CompressBatch(os.fspath(compressor_spec), os.fspath(store_uri), storage_options, device,
                           int(num_cpus) if num_cpus else None)
    written = 0
    with tqdm(total=len(texts), unit="node", desc="index", disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            written += int(worker({"text": texts[i:i + batch_size]})["written"][0])
            bar.update(len(texts[i:i + batch_size]))
    worker.store.close()
    return IndexReport(len(texts), written, time.perf_counter() - start, "local", 1)


def index_with_ray(items: Iterable[Any], compressor_spec: str | os.PathLike, store_uri: str | os.PathLike, *,
                   concurrency: int = 2, num_cpus: float | None = 1, num_gpus: float = 0,
                   batch_size: int = DEFAULT_BATCH_SIZE, storage_options: dict[str, str] | None = None,
                   device: str = "auto", progress: bool = False) -> IndexReport:
    """Compress the texts missing from the store with `concurrency` Ray actors of `num_cpus`/`num_gpus` each.

    Uses the running Ray cluster, else starts a local one (Ray's own `ray.init()` rules:
    ``RAY_ADDRESS=auto`` joins the cluster of this node). `batch_size` texts go to an actor at a
    time and are written in one store commit.
    """
    _check_options(concurrency, batch_size)
    try:
        import ray
    except ImportError as e:
        raise InvalidInputError("engine 'ray' needs Ray Data: pip install 'icae-rag[scale]'") from e
    from tqdm.auto import tqdm

    texts = texts_of(items)
    start = time.perf_counter()
    if not texts:
        return IndexReport(0, 0, time.perf_counter() - start, "ray", concurrency)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    threads = int(num_cpus) if num_cpus else None
    results = ray.data.from_items([{"text": t} for t in texts]).map_batches(
        CompressBatch,
        fn_constructor_args=(os.fspath(compressor_spec), os.fspath(store_uri), storage_options, device, threads),
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus, num_gpus=num_gpus or None)
    written = 0
    with tqdm(total=len(texts), unit="node", desc="index", disable=not progress) as bar:
        for batch in results.iter_batches(batch_format="numpy", batch_size=None):
            written += int(batch["written"].sum())
            bar.update(int(batch["texts"].sum()))
    return IndexReport(len(texts), written, time.perf_counter() - start, "ray", concurrency)


def index(items: Iterable[Any], compressor_spec: str | os.PathLike, store_uri: str | os.PathLike, *,
          engine: str = "local", **options: Any) -> IndexReport:
    """Dispatch to `index_local` or `index_with_ray` by `engine` ("local" or "ray")."""
    engines = {"local": index_local, "ray": index_with_ray}
    if engine not in engines:
        raise InvalidInputError(f"unknown engine {engine!r}: choose 'local' or 'ray'")
    return engines[engine](items, compressor_spec, store_uri, **options)


__all__: Sequence[str] = ["CompressBatch", "IndexReport", "index", "index_local", "index_with_ray", "read_documents",
                          "texts_of"]
