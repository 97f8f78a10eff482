"""Plugins: compressor kinds and data sets that a third-party distribution declares by entry point.

The third-party distribution here is written into a temporary directory as a package plus a
`.dist-info` folder (METADATA and entry_points.txt): `importlib.metadata` finds it on sys.path
(or PYTHONPATH) as it finds one pip installed, without pip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import TEXT
from icae_rag import plugins
from icae_rag.data import registry as dataset_registry
from icae_rag.errors import DataError, PluginError, UnknownCompressorError

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
from dataclasses import dataclass

from icae_rag.models.backbones import TINY_DECODER
from icae_rag.compressors import RawTextCompressor


@dataclass
class ThirdConfig:
    decoder: str = TINY_DECODER


class ThirdCompressor(RawTextCompressor):
    """A third-party kind: the raw baseline at ratio 1, on the tiny decoder."""

    config_class = ThirdConfig
    reads_text = False


class NotACompressor:
    pass
'''
# Data-set modules are imported when the registry is first read (the CLI builds its parser from
# it), so this one imports no torch.
PLUGIN_DATA = '''
from icae_rag.data import Dataset, QAExample

TEXT = {text!r}


def third_qa():
    return Dataset("third-qa", "qa", lambda root: [QAExample("q1", TEXT, "When did Apollo 11 land?", ("1969",))],
                   "one question from a plugin", frozenset({{"bench-qa"}}), bench_limit=1)
'''
ENTRY_POINTS = """[icae_rag.compressors]
thirdkind = thirdkind_plugin:ThirdCompressor
{extra}
[icae_rag.datasets]
third-qa = thirdkind_data:third_qa
"""


def write_distribution(root: Path, extra_kinds: str = "") -> Path:
    """A distribution "thirdkind-plugin" in `root`: what `pip install` would leave in site-packages."""
    (root / "thirdkind_plugin.py").write_text(PLUGIN, encoding="utf-8")
    (root / "thirdkind_data.py").write_text(PLUGIN_DATA.format(text=TEXT), encoding="utf-8")
    info = root / "thirdkind_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdkind-plugin\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(ENTRY_POINTS.format(extra=extra_kinds), encoding="utf-8")
    return root


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """The third-party distribution on sys.path, with its module, kind and data set undone afterwards."""
    extra = ("broken = thirdkind_missing_module:Whatever\nnotone = thirdkind_plugin:NotACompressor\n"
             "raw = thirdkind_plugin:ThirdCompressor\n")
    monkeypatch.syspath_prepend(str(write_distribution(tmp_path, extra)))
    monkeypatch.setattr(dataset_registry, "_PLUGINS_READ", False)
    monkeypatch.setattr(dataset_registry, "_BROKEN_PLUGINS", {})
    yield tmp_path
    for kind in ("thirdkind", "notone"):
        if kind in plugins._REGISTRY:
            plugins.unregister_compressor(kind)
    dataset_registry._DATASETS.pop("third-qa", None)
    sys.modules.pop("thirdkind_plugin", None)
    sys.modules.pop("thirdkind_data", None)


def test_pyproject_declares_the_builtin_kinds_as_the_code_does():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["entry-points"]["icae_rag.compressors"] == plugins.BUILTIN_COMPRESSORS


def test_a_declared_kind_is_listed_without_import_and_loaded_on_first_use(third_party):
    from icae_rag.compressors import RawTextCompressor, compressor_kinds, get_compressor_class

    with pytest.warns(UserWarning, match="built-in compressor kind 'raw'"):
        kinds = compressor_kinds()
    assert {"thirdkind", "broken", "notone", "kvzip"} <= set(kinds) and "thirdkind_plugin" not in sys.modules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config_cls, cls = get_compressor_class("thirdkind")
        assert get_compressor_class("raw")[1] is RawTextCompressor  # a plugin cannot replace a built-in
    assert "thirdkind_plugin" in sys.modules and cls.kind == "thirdkind" and config_cls.__name__ == "ThirdConfig"


def test_a_plugin_that_fails_to_load_is_named_and_left_out_of_trait_listings(third_party):
    from icae_rag.compressors import compressor_kinds, get_compressor_class, load_compressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PluginError, match=r"'broken' .*thirdkind_missing_module:Whatever.*ModuleNotFoundError"):
            get_compressor_class("broken")
        with pytest.raises(PluginError, match="must name a Compressor subclass"):
            load_compressor("notone")
    with pytest.warns(UserWarning, match="'broken'.*left out"):
        compressed = compressor_kinds(reads_text=False)
    assert "thirdkind" in compressed and "broken" not in compressed and "notone" not in compressed


def test_unregister_compressor_undoes_register(third_party):
    from icae_rag.compressors import (
        RawTextCompressor,
        compressor_kinds,
        register_compressor,
        unregister_compressor,
    )

    class Other(RawTextCompressor):
        pass

    register_compressor("other", RawTextCompressor.config_class, Other)
    assert "other" in compressor_kinds()
    unregister_compressor("other")
    assert "other" not in compressor_kinds()
    with pytest.raises(UnknownCompressorError, match="not registered"):
        unregister_compressor("other")
    # A declared kind stays listed, and is loaded again on its next use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = plugins.get_compressor_class("thirdkind")
        unregister_compressor("thirdkind")
        assert "thirdkind" in compressor_kinds() and plugins.get_compressor_class("thirdkind") == first


def test_a_raw_soft_prompt_is_readable_before_its_kind_is_loaded_again(tiny_raw, tiny_icae):
    from icae_rag.compressors import unregister_compressor

    prompt = tiny_raw.compress(TEXT)
    unregister_compressor("raw")  # as in a process that never used the raw kind
    tiny_icae.check_memory(prompt)
    assert "raw" in plugins._REGISTRY


def test_a_plugin_data_set_is_registered_on_first_lookup_and_can_be_unregistered(third_party):
    from icae_rag.data import dataset_names, get_dataset, register_dataset, unregister_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "third-qa" in dataset_names(use="bench-qa")
    assert get_dataset("third-qa").load(None)[0].answers == ("1969",)
    unregister_dataset("third-qa")
    assert "third-qa" not in dataset_names()
    with pytest.raises(DataError, match="not registered"):
        unregister_dataset("third-qa")
    register_dataset("third-qa", "text", lambda root: ["x"], "registered again at run time")
    assert get_dataset("third-qa").records == "text"


def test_a_broken_plugin_data_set_is_named_when_asked_for(tmp_path, monkeypatch):
    info = tmp_path / "brokenset-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenset\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[icae_rag.datasets]\nbroken-set = brokenset_missing:load\n",
                                           encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dataset_registry, "_PLUGINS_READ", False)
    monkeypatch.setattr(dataset_registry, "_BROKEN_PLUGINS", {})
    with pytest.warns(UserWarning, match="'broken-set'.*left out"):
        assert "broken-set" not in dataset_registry.dataset_names()
    with pytest.raises(PluginError, match="brokenset_missing:load"):
        dataset_registry.get_dataset("broken-set")


def _console(env: dict, *argv: str) -> subprocess.CompletedProcess:
    """The installed `icae-rag` console script (else `python -m icae_rag.cli`) in a fresh process."""
    script = shutil.which("icae-rag", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "icae_rag.cli"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_the_console_script_offers_and_runs_a_third_party_kind(tmp_path):
    (tmp_path / "site").mkdir()
    plugin_dir = write_distribution(tmp_path / "site")
    context = tmp_path / "apollo.txt"
    context.write_text(TEXT, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(plugin_dir), os.environ.get("PYTHONPATH", "")]))

    ask_help = _console(env, "ask", "--help")
    assert ask_help.returncode == 0, ask_help.stderr
    assert "thirdkind" in ask_help.stdout and "kvzip" in ask_help.stdout
    bench_help = _console(env, "bench", "--help")
    assert bench_help.returncode == 0 and "third-qa" in bench_help.stdout, bench_help.stderr

    # Listing the kinds reads the entry points' names only: neither torch nor the plugin is imported.
    probe = ("import contextlib, io, json, sys\nfrom icae_rag.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
             "    main(['ask', '--help'])\n"
             "print(json.dumps({'listed': 'thirdkind' in out.getvalue(), 'torch': 'torch' in sys.modules,"
             " 'plugin': 'thirdkind_plugin' in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert json.loads(proc.stdout) == {"listed": True, "torch": False, "plugin": False}

    ask = _console(env, "ask", "--compressor", "thirdkind", "--context", str(context), "--device", "cpu", "--json",
                   "--max-new-tokens", "2", "When did Apollo 11 land?")
    assert ask.returncode == 0, ask.stderr
    out = json.loads(ask.stdout)
    assert out["compressor"] == "thirdkind" and out["context_positions"] == out["input_tokens"] > 0


def test_a_compressor_overriding_the_0_1_decoding_method_is_refused():
    from icae_rag.compressors import RawTextCompressor

    with pytest.raises(TypeError, match=r"renamed to reading\(\)"):
        class Old(RawTextCompressor):
            def decoding(self):
                raise AssertionError("never called")
