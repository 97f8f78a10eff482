"""No import cycle between icae_rag's modules, counting imports inside functions too."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "icae_rag"


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a file under the package's parent folder."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth; `if TYPE_CHECKING:` blocks never run."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        todo.extend(children)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name imported from a package counts as its
    submodule when one exists, else as the package itself)."""
    root = package.parent
    files = {module_name(p, root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base_parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(base_parts + ([node.module] if node.module else []))
                if node.level == 0:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_icae_rag_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "icae_rag.compressors.base" in graph and graph["icae_rag.cli"], "the walk found the modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_decoding_imports_no_compressor_module_even_for_typing() -> None:
    # decoding/ types what it calls back with its own MemoryReader protocol; compressors/ imports
    # decoding/ to hand it answer and stream.
    for path in sorted((PACKAGE / "decoding").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert "compressors" not in module.split("."), f"{path.name} imports {module}"
                assert not (module.strip(".") == "" and any(a.name == "compressors" for a in node.names)), path.name
            elif isinstance(node, ast.Import):
                assert not any("icae_rag.compressors" in a.name for a in node.names), path.name


def test_the_check_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.c"] == set(), "an import under TYPE_CHECKING never runs"
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


ROOT = PACKAGE.parent
# Where the project's own code lives: none of it may import a module or use a name that 0.2 removed.
PROJECT_DIRS = ("icae_rag", "tests", "benchmarks", "examples", "integrations", "docs")
# Scripts under docs/results are records of runs at the commit each names (some patch internals of
# that commit), kept as they ran.
RECORDS = ROOT / "docs" / "results"


def _imported_names(path: Path) -> set[str]:
    """Every module name a Python file imports, relative imports resolved inside icae_rag."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module_name(path, ROOT).split(".")
                keep = len(here) - node.level + (path.name == "__init__.py")
                base = ".".join(here[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


# Modules of 0.1 that 0.2 removed or moved (CHANGELOG.md): old module -> where its names live now.
REMOVED_MODULES = {
    "icae_rag.chunking": "icae_rag.data.chunking",
    "icae_rag.datasets": "icae_rag.data",
    "icae_rag.distributed": "icae_rag.indexing",
    "icae_rag.generation": "icae_rag.decoding",
    "icae_rag.lance_store": "icae_rag.stores",
    "icae_rag.memory_store": "icae_rag.stores",
    "icae_rag.retrieval": "icae_rag.data.retrieval",
    "icae_rag.slot_store": "icae_rag.stores",
    # Moved into subpackages in 0.2, with no alias left behind.
    "icae_rag.backbones": "icae_rag.models.backbones",
    "icae_rag.hf_compat": "icae_rag.models.hf_compat",
    "icae_rag.kv_attention": "icae_rag.models.kv_attention",
    "icae_rag.kv_memory": "icae_rag.memories.kv_memory",
    "icae_rag.kv_quant": "icae_rag.memories.kv_quant",
    "icae_rag.memory": "icae_rag.memories.base",
    "icae_rag.runtime": "icae_rag.models.runtime",
    "icae_rag.soft_prompt": "icae_rag.memories.soft_prompt",
}


def test_the_project_imports_no_removed_module() -> None:
    removed = set(REMOVED_MODULES)
    text_import = re.compile(r"(?:from|import)\s+(icae_rag\.[\w.]+)|from\s+icae_rag\s+import\s+([\w, ]+)")
    found = []
    for folder in PROJECT_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if ".venv" in path.parts or not path.is_file() or RECORDS in path.parents:
                continue
            if path.suffix == ".py":
                used = _imported_names(path)
            elif path.suffix in (".md", ".ipynb"):
                used = set()
                for dotted, listed in text_import.findall(path.read_text(encoding="utf-8")):
                    used |= {dotted} if dotted else {f"icae_rag.{n.strip()}" for n in listed.split(",")}
            else:
                continue
            where = str(path.relative_to(ROOT))
            found += [f"{where}: {name}" for name in sorted(used & removed)]
    assert not found, "imports of modules removed in 0.2 (import the new paths):\n" + "\n".join(found)


@pytest.mark.parametrize(("old", "new"), sorted(REMOVED_MODULES.items()))
def test_a_removed_module_is_gone_and_its_replacement_imports(old: str, new: str) -> None:
    # Checked on disk, not by importing: an editable install of another checkout could still find it.
    where = ROOT.joinpath(*old.split("."))
    assert not where.with_suffix(".py").exists() and not where.is_dir(), old
    importlib.import_module(new)


# Names 0.2 removed (CHANGELOG.md): the project must not say them. `slot_store` alone is also the
# removed module `icae_rag.slot_store` (which docs may name; imports of it are checked above) and a
# word of test and file names, so only its argument and attribute uses count.
RETIRED_NAMES = re.compile(
    r"\b(SlotStore|SlotKey|SlotStats|SlotCache|SoftPromptCompressor|SoftPromptSynthesizer|SoftPromptIngestion"
    r"|SoftPromptComponent|SLOT_KEY|slot_store_dir|check_soft_prompt|num_soft_tokens|LongLLMLinguaCompressor"
    r"|MemoryPostprocessor|MemorySynthesizer|MemoryIngestion|MemoryComponent|SoftPromptCompressEndEvent)\b"
    r"|(?<!icae_rag)\.slot_store\b|\bslot_store\s*[=:]")
PROJECT_FILES = ("README.md",)
# Pages whose job is to name the old names beside the new ones (like CHANGELOG.md, not scanned).
MIGRATION_PAGES = ("docs/deprecation.md",)


def _project_text_files() -> list[Path]:
    files = [ROOT / f for f in PROJECT_FILES]
    for folder in PROJECT_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".ipynb", ".html", ".js")]
    return sorted(p for p in files if p.is_file() and ".venv" not in p.parts and RECORDS not in p.parents
                  and p != Path(__file__).resolve() and str(p.relative_to(ROOT)) not in MIGRATION_PAGES)


def test_the_project_uses_no_retired_name() -> None:
    found = []
    for path in _project_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # A migration table row (`old` -> `new`) or a line about 0.1 names the old name on purpose.
            if RETIRED_NAMES.search(line) and "` -> `" not in line and "0.1" not in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "names removed in 0.2 (use the new names, CHANGELOG.md):\n" + "\n".join(found)


# Names 0.2 deprecates (removed in 0.3, docs/deprecation.md): only their definitions and the tests
# of their warnings may say them, so the project itself emits no DeprecationWarning of its own.
DEPRECATED_NAMES = re.compile(r"\bslot_(start|end)\b|resolve\([^)]*\)\.prompts\b|reconstruct\([^)]*soft_prompt=")
DEPRECATION_DEFINED_IN = ("icae_rag/memories/soft_prompt.py", "icae_rag/serving.py", "icae_rag/compressors/base.py",
                          "tests/test_soft_prompt.py", "tests/test_serving.py", "tests/test_decoding.py")


def test_the_project_uses_no_name_deprecated_in_0_2() -> None:
    found = []
    for path in _project_text_files():
        if str(path.relative_to(ROOT)) in DEPRECATION_DEFINED_IN:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if DEPRECATED_NAMES.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "names deprecated in 0.2 (use the new names, docs/deprecation.md):\n" + "\n".join(found)
