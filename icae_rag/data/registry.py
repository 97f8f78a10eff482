"""The data-set registry: each named data set, what its records are, how to load it, which commands offer it.

Each built-in data set is registered once (`register_dataset`, at the end of this module) with the
commands that offer it; installed plugins add theirs through the `icae_rag.datasets` entry-point
group, read on the first lookup. Training sources, `icae-rag bench qa --dataset` and the LlamaIndex
RAG benchmark read the registry when they run. The readers live in `icae_rag.data.readers`,
`icae_rag.data.qa` and `icae_rag.data.longqa`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import DataError, InvalidInputError, PluginError
from ..plugins import DATASET_GROUP, entry_points
from .longqa import load_covid_qa, load_qmsum, load_squality, load_techdocs
from .qa import _boolq, _clapnq, _hotpotqa, _nq_open_oracle, _pubmedqa, _qed, _xquad, load_squad
from .readers import load_jsonl_qa, load_jsonl_text, load_text

__all__ = [
    "DEFAULT_BENCH_LIMIT",
    "Dataset",
    "dataset_names",
    "get_dataset",
    "load_dataset",
    "register_dataset",
    "unregister_dataset",
]

DEFAULT_BENCH_LIMIT = 100


@dataclass(frozen=True)
class Dataset:
    """A named data set: what its records are, how to load them, and which commands offer it.

    `records` is "text" (documents as str), "qa" (`QAExample`) or "longqa" (`LongDocQA`).
    `load(root, **params)` reads it; `params` names the extra options it takes (a training
    source's `path` or `squad_version`). `uses` holds "train" (a training source), "bench-qa"
    (`icae-rag bench qa --dataset`), "bench-qa-default" (run when no --dataset is given),
    "fidelity" and "rag" (the LlamaIndex RAG benchmark). `bench_limit` is the number of
    questions `bench` samples when no --limit is given.
    """

    name: str
    records: Literal["text", "qa", "longqa"]
    load: Callable[..., list]
    description: str
    uses: frozenset[str] = frozenset()
    params: tuple[str, ...] = ()
    bench_limit: int = DEFAULT_BENCH_LIMIT


_DATASETS: dict[str, Dataset] = {}
# The installed `icae_rag.datasets` entry points are read on the first lookup, once per process;
# a plugin that fails to load is left out (with a warning) and its error kept for `get_dataset`.
_PLUGINS_READ = False
_BROKEN_PLUGINS: dict[str, PluginError] = {}
_USES = frozenset({"train", "bench-qa", "bench-qa-default", "fidelity", "rag"})


def register_dataset(name: str, records: Literal["text", "qa", "longqa"], load: Callable[..., list],
                     description: str, *, uses: Sequence[str] = (), params: Sequence[str] = (),
                     bench_limit: int = DEFAULT_BENCH_LIMIT) -> Dataset:
    """Register a data set under a new lowercase name; see `Dataset` for the fields."""
    if name != name.lower() or name in _DATASETS:
        raise ValueError(f"data set {name!r} must be lowercase and registered only once")
    if records not in ("text", "qa", "longqa") or not set(uses) <= _USES:
        raise ValueError(f"data set {name!r}: records must be text, qa or longqa and uses a subset of "
                         f"{sorted(_USES)}, got {records!r} and {sorted(uses)}")
    _DATASETS[name] = Dataset(name, records, load, description, frozenset(uses), tuple(params), bench_limit)
    return _DATASETS[name]


def unregister_dataset(name: str) -> None:
    """Remove a registered data set (one `register_dataset` or an entry point added)."""
    _read_plugins()
    if name not in _DATASETS:
        raise DataError(f"data set {name!r} is not registered: registered are {', '.join(_DATASETS)}")
    del _DATASETS[name]


def dataset_names(*, use: str | None = None, records: str | None = None) -> list[str]:
    """Registered data-set names in registration order (built-ins, then plugins), read now; optionally
    one use or record type."""
    _read_plugins()
    return [d.name for d in _DATASETS.values()
            if use in (None, *d.uses) and records in (None, d.records)]


def get_dataset(name: str) -> Dataset:
    """The registered data set `name`."""
    _read_plugins()
    if name in _BROKEN_PLUGINS and name not in _DATASETS:
        raise _BROKEN_PLUGINS[name]
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(dataset_names())}")
    return _DATASETS[name]


def _read_plugins() -> None:
    """Register the data sets of the installed `icae_rag.datasets` entry points (first call only)."""
    global _PLUGINS_READ
    if _PLUGINS_READ:
        return
    _PLUGINS_READ = True
    for name, ep in entry_points(DATASET_GROUP).items():
        if name in _DATASETS:
            warnings.warn(f"an installed package declares the data set {name!r} ({ep.value!r}), which is "
                          "already registered: ignored", stacklevel=3)
            continue
        try:
            _load_plugin(name, ep)
        except PluginError as e:
            _BROKEN_PLUGINS[name] = e
            warnings.warn(f"{e}; the data set is left out", stacklevel=3)


def _load_plugin(name: str, ep: Any) -> None:
    where = f"the data set {name!r} (entry point {name} = {ep.value!r} in group {DATASET_GROUP})"
    try:
        obj = ep.load()
        dataset = obj if isinstance(obj, Dataset) else obj()
    except Exception as e:  # a plugin can fail any way; name it and the cause
        raise PluginError(f"{where} could not be loaded: {type(e).__name__}: {e}") from e
    if dataset is None and name in _DATASETS:  # the callable registered it
        return
    if not isinstance(dataset, Dataset) or dataset.name != name:
        raise PluginError(f"{where} must name a Dataset called {name!r}, or a callable that returns one "
                          f"or registers it with register_dataset; got {dataset!r}")
    try:
        register_dataset(name, dataset.records, dataset.load, dataset.description, uses=dataset.uses,
                         params=dataset.params, bench_limit=dataset.bench_limit)
    except ValueError as e:
        raise PluginError(f"{where}: {e}") from e


def load_dataset(name: str, root: str | os.PathLike | None = None, **params: Any) -> list:
    """Load the registered data set `name` (documents, `QAExample`s or `LongDocQA`s)."""
    dataset = get_dataset(name)
    if set(params) != set(dataset.params):
        raise InvalidInputError(f"data set {name!r} takes the options {list(dataset.params)}, "
                                f"got {sorted(params)}")
    return dataset.load(root, **params)


def _texts(name: str) -> Callable[[str | os.PathLike | None], list[str]]:
    return lambda root: load_text(name, root=root)  # type: ignore[arg-type]


_TRAIN, _EVAL = ("train",), ("bench-qa",)
register_dataset("gutenberg", "text", _texts("gutenberg"), "Project Gutenberg books", uses=_TRAIN)
register_dataset("wikitext2-valid", "text", _texts("wikitext2-valid"), "WikiText-2 validation", uses=_TRAIN)
register_dataset("tinyshakespeare", "text", _texts("tinyshakespeare"), "Tiny Shakespeare", uses=_TRAIN)
# Held out for fidelity and efficiency: never a training source.
register_dataset("wikitext2-test", "text", _texts("wikitext2-test"), "WikiText-2 test", uses=("fidelity",))
register_dataset("jsonl-text", "text", lambda root, path: load_jsonl_text(path),
                 'a user\'s JSONL of {"text"} objects', uses=_TRAIN, params=("path",))
register_dataset("squad-train", "qa", lambda root, squad_version: load_squad("train", version=squad_version, root=root),
                 "SQuAD dev, the 35 training articles", uses=_TRAIN, params=("squad_version",))
register_dataset("jsonl-qa", "qa", lambda root, path: load_jsonl_qa(path),
                 'a user\'s JSONL of {"context", "question", "answer"} objects', uses=_TRAIN, params=("path",))
register_dataset("nq-open-oracle", "qa", _nq_open_oracle, "NQ-open with its gold passage", uses=_TRAIN)
register_dataset("qed-nq-dev", "qa", _qed, "QED (NQ dev)", uses=_TRAIN)
register_dataset("boolq-dev", "qa", _boolq, "BoolQ dev", uses=_TRAIN)
register_dataset("pubmedqa", "qa", _pubmedqa, "PubMedQA (PQA-L)", uses=_TRAIN)
register_dataset("clapnq-dev", "qa", _clapnq, "CLAPNQ dev", uses=_TRAIN)
# `icae-rag bench qa` data sets; squad, nq, covid and techdocs are its defaults, in report order.
register_dataset("squad", "qa", lambda root: load_squad("heldout", root=root),
                 "SQuAD v1.1 dev, the 13 held-out articles (never trained on)",
                 uses=("bench-qa", "bench-qa-default", "rag"))
register_dataset("nq", "qa", _nq_open_oracle,
                 "NQ-open oracle passages (not a training source of the shipped checkpoints)",
                 uses=("bench-qa", "bench-qa-default"), bench_limit=30)
# Small by default: the raw and LongLLMLingua modes read five 512-token passages per question.
register_dataset("covid", "longqa", lambda root: load_covid_qa(root=root), "COVID-QA (evaluation only)",
                 uses=("bench-qa", "bench-qa-default", "rag"), bench_limit=6)
# Shipped with the package (icae_rag/data/techdocs), so the data root is not read.
register_dataset("techdocs", "longqa", lambda root: load_techdocs("test"),
                 "Technical documentation (man pages, Python docs; evaluation only)",
                 uses=("bench-qa", "bench-qa-default", "rag"), bench_limit=6)
register_dataset("techdocs-dev", "longqa", lambda root: load_techdocs("dev"),
                 "Technical documentation, dev split (other documents; calibration only, never for reported results)",
                 uses=("bench-qa", "rag"), bench_limit=6)
register_dataset("xquad-en", "qa", _xquad, "XQuAD English (a subset of SQuAD v1.1 dev)", uses=_EVAL)
register_dataset("hotpotqa", "qa", _hotpotqa, "HotpotQA, 100 dev questions with distractor paragraphs",
                 uses=_EVAL)
register_dataset("squality", "longqa", lambda root: load_squality("test", root=root),
                 "SQuALITY test (long stories, summary-style answers)", uses=("bench-qa", "rag"), bench_limit=6)
register_dataset("qmsum", "longqa", lambda root: load_qmsum("test", root=root),
                 "QMSum test (meeting transcripts, summary-style answers)", uses=("bench-qa", "rag"),
                 bench_limit=6)
