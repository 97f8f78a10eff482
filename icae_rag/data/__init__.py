"""Data: the data-set registry, its readers, and cutting and selecting text (no torch).

- `registry`: `Dataset`, `register_dataset` / `unregister_dataset`, `dataset_names`, `get_dataset`,
  `load_dataset`, the built-in data sets and the installed plugins' ones.
- `readers`: the records (`QAExample`, `LongDocQA`), the data folder, JSON checks, plain-text corpora,
  users' JSONL files, `split_documents`.
- `qa`: paragraph QA sets (SQuAD and its fixed split, XQuAD, NQ-open, QED, BoolQ, PubMedQA, CLAP-NQ,
  HotpotQA); `longqa`: long-document sets (COVID-QA, techdocs, SQuALITY, QMSum).
- `chunking`: spans and sentence-aware chunks of token sequences; `retrieval`: the passages of a
  long document a question needs.
- `techdocs/`: the techdocs QA set shipped with the package.

The registry's and readers' public names are importable from here (`from icae_rag.data import
load_dataset`); each submodule is imported on first use, so `icae_rag.data.chunking` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule defining it.
_EXPORTS = {
    **dict.fromkeys(["DEFAULT_BENCH_LIMIT", "Dataset", "dataset_names", "get_dataset", "load_dataset",
                     "register_dataset", "unregister_dataset"], "registry"),
    **dict.fromkeys(["DATA_ENV_VAR", "TEXT_NAMES", "LongDocQA", "QAExample", "default_data_root",
                     "load_jsonl_qa", "load_jsonl_text", "load_text", "read_text_file",
                     "split_documents"], "readers"),
    **dict.fromkeys(["SQUAD_HELDOUT_ARTICLES", "load_squad"], "qa"),
    **dict.fromkeys(["TECHDOCS_DIR", "load_covid_qa", "load_qmsum", "load_squality", "load_techdocs"],
                    "longqa"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'icae_rag.data' has no attribute {name!r}")
