"""The README's figure is drawn from committed results files: re-running its script on them gives
the committed SVG byte for byte, so the figure cannot drift from its data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs/figures/make_figure.py"
SVG = ROOT / "docs/figures/answers-vs-ratio.svg"


def test_figure_regenerates_byte_identically(tmp_path: Path):
    out = tmp_path / "figure.svg"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, cwd=tmp_path)
    assert out.read_bytes() == SVG.read_bytes(), "re-run docs/figures/make_figure.py and commit"


def test_readme_shows_the_figure():
    assert "](docs/figures/answers-vs-ratio.svg)" in (ROOT / "README.md").read_text(encoding="utf-8")
