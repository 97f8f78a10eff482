"""One vocabulary (issue 24): the renamed names still work for one release, with a DeprecationWarning,
and the project itself uses none of them."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest
import torch

from icae_rag.soft_prompt import Piece, SoftPrompt

ROOT = Path(__file__).resolve().parent.parent

# (module, old name, new name): the new name lives in the same module.
RENAMED_CLASSES = [
    ("icae_rag", "SlotStore", "SqliteMemoryStore"),
    ("icae_rag.stores", "SlotStore", "SqliteMemoryStore"),
    ("icae_rag.stores", "SlotKey", "MemoryKey"),
    ("icae_rag.stores", "SlotStats", "StoreStats"),
    ("icae_rag.stores.sqlite", "SlotStore", "SqliteMemoryStore"),
    ("icae_rag.stores.base", "SlotKey", "MemoryKey"),
    ("icae_rag.stores.base", "SlotStats", "StoreStats"),
    ("icae_rag.serving", "SlotCache", "MemoryCache"),
    ("icae_rag.eval.longllmlingua", "LongLLMLinguaCompressor", "LongLLMLinguaBaseline"),
]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED_CLASSES)
def test_an_old_class_name_warns_and_is_the_new_class(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(module)}\.{old} is deprecated: use .*{new}"):
        cls = getattr(mod, old)
    assert cls is getattr(mod, new)
    assert old not in getattr(mod, "__all__", [])  # `import *` takes only the new names
    with pytest.raises(AttributeError):
        mod.NoSuchName  # noqa: B018


def test_num_soft_tokens_and_check_soft_prompt_warn_and_forward(tiny_raw) -> None:
    prompt = tiny_raw.compress("The lighthouse keeper counted ships.")
    with pytest.warns(DeprecationWarning, match="num_soft_tokens is deprecated: use Memory.num_positions"):
        assert prompt.num_soft_tokens == prompt.num_positions > 0
    with pytest.warns(DeprecationWarning, match="check_soft_prompt is deprecated: use Compressor.check_memory"):
        tiny_raw.check_soft_prompt(prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_raw.check_memory(prompt)
        other = SoftPrompt(torch.zeros(2, 4), (Piece("x", 0, 3, 0, 2),), "raw", "v", "elsewhere")
        assert other.num_positions == 2 and other.compression_ratio == 1.5


def test_answer_soft_tokens_warns_and_forwards(tiny_raw) -> None:
    answer = tiny_raw.answer("Who counted?", [tiny_raw.compress("The lighthouse keeper counted ships.")],
                             max_new_tokens=1)
    with pytest.warns(DeprecationWarning, match="Answer.soft_tokens is deprecated: use Answer.context_positions"):
        assert answer.soft_tokens == answer.context_positions > 0


# What the project must no longer say. `slot_store` alone is also the deprecated module path
# `icae_rag.slot_store` (an _alias.py module), so only its argument and attribute uses count.
OLD_NAMES = re.compile(
    r"\b(SlotStore|SlotKey|SlotStats|SlotCache|SoftPromptCompressor|SoftPromptSynthesizer|SoftPromptIngestion"
    r"|SoftPromptComponent|SLOT_KEY|slot_store_dir|check_soft_prompt|num_soft_tokens|LongLLMLinguaCompressor)\b"
    r"|(?<!icae_rag)\.slot_store\b|\bslot_store\s*[=:]")
PROJECT_DIRS = ("icae_rag", "tests", "benchmarks", "examples", "integrations", "docs")
PROJECT_FILES = ("README.md",)
# docs/results holds records of past runs, kept as they ran.
RECORDS = ROOT / "docs" / "results"
# Where the aliases are defined or tested: they name the old names on purpose.
ALIAS_HOMES = {ROOT / p for p in (
    "icae_rag/__init__.py", "icae_rag/_deprecation.py", "icae_rag/memory.py", "icae_rag/compressors/base.py",
    "icae_rag/stores/__init__.py", "icae_rag/stores/base.py", "icae_rag/stores/sqlite.py", "icae_rag/serving.py",
    "icae_rag/eval/longllmlingua.py", "tests/test_deprecations.py",
    "integrations/llama_index/tests/test_li_deprecations.py",
)} | set((ROOT / "integrations/llama_index/llama_index/postprocessor/icae_rag").glob("*.py"))


def _project_files() -> list[Path]:
    files = [ROOT / f for f in PROJECT_FILES]
    for folder in PROJECT_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".ipynb", ".html", ".js")]
    return sorted(p for p in files if p.is_file() and ".venv" not in p.parts and RECORDS not in p.parents
                  and p not in ALIAS_HOMES)


def test_the_project_uses_no_deprecated_name() -> None:
    found = []
    for path in _project_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # A line that documents the deprecation (says so, or maps `old` -> `new`) may name the old names.
            if OLD_NAMES.search(line) and "deprecated" not in line.lower() and "` -> `" not in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "deprecated names in the project (use the new names):\n" + "\n".join(found)


def test_the_alias_homes_use_old_names_only_to_define_the_aliases() -> None:
    """In the modules that define aliases, an old name appears only on an alias-defining line."""
    defining = re.compile(r"lambda|_sqlite_store|renamed|class_aliases|Deprecated|deprecated|_RENAMED|def |store_keyword|"
                          r"slot_store_dir.*store_uri|^\s*#")
    found = []
    for path in sorted(ALIAS_HOMES):
        if path.name.startswith("test_"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OLD_NAMES.search(line) and not defining.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "old names used outside an alias definition:\n" + "\n".join(found)
