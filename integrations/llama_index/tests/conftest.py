"""The root tests' shared fixtures and helpers (tests/conftest.py: tiny backbones, TEXT, spy_compress), here too.

The root conftest is loaded once under its own module name and its names are re-exported, so
`from conftest import TEXT` means the same object in both test folders, run together or apart.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `benchmarks` and `examples` are imported from the repository root
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:  # the root tests' helpers (qa_app_helpers), after this folder
    sys.path.append(str(ROOT / "tests"))


def _root_conftest():
    name = "icae_rag_tests_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


globals().update({k: v for k, v in vars(_root_conftest()).items() if not k.startswith("__")})
