"""What every benchmark result carries: environment, versions, commit; atomic result files; peak RSS."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..compressors.base import package_versions
from ..io import atomic_path, write_json


def git_commit() -> str:
    """The checked-out commit of the repository the package runs from, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(seed: int) -> dict[str, Any]:
    """Commit, versions and hardware a result was measured with."""
    return {
        "git_commit": git_commit(),
        "versions": package_versions() | {"python": platform.python_version()},
        "hardware": {"machine": platform.machine(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "seed": seed,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(out: Path, results: dict[str, Any], markdown: str) -> None:
    """results.json + results.md in `out`, both atomic."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's resident memory every few ms: `.peak_mb` is the peak above the start,
    `.resident_mb` the peak itself (freed memory the allocator kept counts in both)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_mb = self.resident_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        if not Path("/proc/self/statm").exists():  # not Linux: report nothing rather than a guess
            self._thread = None
            return self
        self._base = self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            self.peak_mb = self.resident_mb = float("nan")
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mb = (self._peak - self._base) / 2**20
        self.resident_mb = self._peak / 2**20
