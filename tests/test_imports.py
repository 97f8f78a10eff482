"""No import cycle between icae_rag's modules, counting imports inside functions too."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

from icae_rag._alias import ALIASES

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
# Where the project's own code lives: none of it may import a deprecated alias module.
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


def test_the_project_imports_no_deprecated_alias() -> None:
    aliases = set(ALIASES)
    alias_files = {ROOT / (old.replace(".", "/") + ".py") for old in aliases}
    text_import = re.compile(r"(?:from|import)\s+(icae_rag\.[\w.]+)|from\s+icae_rag\s+import\s+([\w, ]+)")
    found = []
    for folder in PROJECT_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path in alias_files or ".venv" in path.parts or not path.is_file() or RECORDS in path.parents:
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
            found += [f"{where}: {name}" for name in sorted(used & aliases)]
    assert not found, "imports of deprecated aliases (import the new paths):\n" + "\n".join(found)


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_an_alias_warns_and_forwards_every_name(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} is deprecated: import {ALIASES[old][0]}"):
        alias = importlib.import_module(old)
    for new in ALIASES[old][1]:
        module = importlib.import_module(new)
        for name in [n for n in vars(module) if not n.startswith("__")]:
            assert getattr(alias, name) is getattr(module, name) or name in vars(alias), (old, name)
    star: dict[str, object] = {}
    exec(f"from {old} import *", star)  # the new modules' public names, not the alias's own imports
    assert set(star) - {"__builtins__"} == set(alias.__all__) and "deprecated" not in star
