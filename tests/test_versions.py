"""The two packages' versions: one place each, in step, and what `icae_rag.__version__` reports."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

# packaging comes with transformers (a core dependency).
from packaging.requirements import Requirement
from packaging.version import Version

import icae_rag

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "pyproject.toml"
LLAMA_INDEX = ROOT / "integrations" / "llama_index" / "pyproject.toml"


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


def test_each_version_is_written_once_in_its_pyproject() -> None:
    core = _project(CORE)
    assert "version" not in core.get("dynamic", [])
    written = f'"{Version(core["version"])}"'
    copies = [p for p in (ROOT / "icae_rag").rglob("*.py") if written in p.read_text(encoding="utf-8")]
    assert not copies, f"the version {written} is written again in {copies}: read it from the metadata"


def test_the_llama_index_package_needs_the_core_minor_it_was_released_with() -> None:
    core, li = _project(CORE), _project(LLAMA_INDEX)
    needs = next(Requirement(r) for r in li["dependencies"] if Requirement(r).name == "icae-rag")
    core_version, li_version = Version(core["version"]), Version(li["version"])
    assert needs.specifier.contains(core_version), (str(needs), core_version)
    # An upper bound: the next core minor may break the package (0.2 removed names 0.1 had).
    assert not needs.specifier.contains(Version(f"{core_version.major}.{core_version.minor + 1}.0"))
    assert li_version.release[:2] == core_version.release[:2]


def test_the_faiss_helpers_are_an_extra_not_a_dependency() -> None:
    li = _project(LLAMA_INDEX)
    names = {Requirement(r).name for r in li["dependencies"]}
    extra = {Requirement(r).name for r in li["optional-dependencies"]["faiss"]}
    assert {"faiss-cpu", "llama-index-vector-stores-faiss", "llama-index-embeddings-huggingface"} <= extra
    assert not names & extra


def test_version_is_the_installed_distributions() -> None:
    try:
        installed = importlib.metadata.version("icae-rag")
    except importlib.metadata.PackageNotFoundError:
        installed = "0+unknown"  # a checkout on sys.path that was never installed
    assert icae_rag.__version__ == installed
