"""Index-time cost of kvzip settings: compress seconds per 1,000 source tokens, measured in one run.

Not a test: it times real work. Texts are compressed one at a time, every setting on a text before
the next text, so all settings see the same machine load; the report gives each setting's seconds
per 1,000 tokens and its ratio to the first setting, per text group. Groups: 256-token nodes of the
`techdocs` test documents, paragraphs of the held-out SQuAD articles, and the first 2,048 tokens of
each techdocs test document (scored in windows).

    python -m benchmarks.kvzip_index_cost --spec kvzip:ratio=4 --spec kvzip --nodes 20 --out bench-cost.json

With `--batch N` the texts go N at a time to `compress_many` (the way ingestion hands them over),
every setting on a batch before the next batch; a spec ending in "@alone" compresses the same texts
one `compress` call each, which measures what scoring several passages per forward saves:

    python -m benchmarks.kvzip_index_cost --batch 8 --spec kvzip:ratio=4@alone --spec kvzip:ratio=4 --out bench-batch.json

A spec ending in "@eager" scores with the eager attention path (every weight materialised), as kvzip
did before its scoring pass used the fused kernel. A spec ending in "@<commit>" runs that commit's
code (a temporary git worktree, in a worker process fed one text at a time, interleaved with the
others): the way to compare with an earlier day's kvzip in one run, e.g.
`--spec kvzip:ratio=4@2e18d53` (kvzip as it was when the adaptive budget was asked for).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock


def text_groups(tokenizer: Any, nodes: int, root: str | None) -> dict[str, list[str]]:
    """{group: texts}: techdocs test nodes, held-out SQuAD paragraphs, 2,048-token techdocs texts."""
    from icae_rag.data import load_dataset, load_squad

    docs = list(dict.fromkeys(r.document for r in load_dataset("techdocs")))
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    chunks = [tokenizer.decode(t[s:s + 256]) for t in ids for s in range(0, len(t) - 256, 256)]
    step = max(1, len(chunks) // nodes)
    paragraphs = list(dict.fromkeys(e.context for e in load_squad("heldout", root=root)))
    return {"techdocs 256-token nodes": chunks[::step][:nodes], "SQuAD held-out paragraphs": paragraphs[:nodes],
            "techdocs 2,048-token texts": [tokenizer.decode(t[:2048]) for t in ids if len(t) >= 2048][:3]}


# Runs in the worker process, importing the other commit's icae_rag: one JSON text per line in, one
# JSON timing per line out. Only what every version of the package has is used.
WORKER = """
import json, sys, time
import icae_rag
from icae_rag import load_compressor
print(json.dumps({"package": icae_rag.__file__}), flush=True)
comp = load_compressor(sys.argv[1], device="cpu")
for line in sys.stdin:
    text = json.loads(line)
    start = time.perf_counter()
    memory = comp.compress(text)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "source_tokens": memory.source_tokens,
                      "ratio": memory.compression_ratio}), flush=True)
"""


class CommitWorker:
    """A spec compressed by another commit's code, in a worker process reading from a temporary worktree."""

    def __init__(self, spec: str, commit: str) -> None:
        self._dir = tempfile.mkdtemp(prefix="kvzip-cost-")
        subprocess.run(["git", "worktree", "add", "--detach", self._dir, commit], check=True, capture_output=True)
        # `python -c` puts its working directory first on sys.path (before PYTHONPATH and the editable
        # install): started inside the worktree, it imports that commit's package.
        self._proc = subprocess.Popen([sys.executable, "-c", WORKER, spec], stdin=subprocess.PIPE, cwd=self._dir,
                                      stdout=subprocess.PIPE, text=True)
        package = Path(json.loads(self._proc.stdout.readline() or "{}").get("package", ""))
        if Path(self._dir).resolve() not in package.resolve().parents:
            self.close()
            raise RuntimeError(f"the worker for {commit} imported icae_rag from {package}, not from its worktree")

    def compress(self, text: str) -> dict[str, float]:
        """{"seconds", "source_tokens", "ratio"} of compressing `text` in the worker."""
        self._proc.stdin.write(json.dumps(text) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the worker process stopped (its error is above)")
        return json.loads(line)

    def close(self) -> None:
        """Stop the worker and remove its worktree."""
        self._proc.stdin.close()
        self._proc.wait()
        subprocess.run(["git", "worktree", "remove", "--force", self._dir], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    """Time every spec on every text, print a Markdown table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", action="append", dest="specs", required=True, help="compressor spec; the first is the base")
    p.add_argument("--nodes", type=int, default=20, help="texts per short-text group")
    p.add_argument("--batch", type=int, default=1, help="texts per compress_many call")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    from tqdm.auto import tqdm

    from icae_rag import load_compressor
    from icae_rag.compressors.kvzip import memory_budget
    from icae_rag.models import kv_attention

    def scoring(spec: str) -> contextlib.AbstractContextManager:
        """The eager scoring path for an "@eager" spec, the default path otherwise."""
        if not spec.endswith("@eager"):
            return contextlib.nullcontext()
        return mock.patch.object(kv_attention, "_has_lse_kernel", lambda query: False)

    def compressor(spec: str) -> Any:
        name, _, where = spec.partition("@")
        return CommitWorker(name, where) if where not in ("", "eager", "alone") else load_compressor(name, device="cpu")

    compressors = {s: compressor(s) for s in args.specs}
    tokenizer = next(c for c in compressors.values() if not isinstance(c, CommitWorker)).decoder.tokenizer
    groups = text_groups(tokenizer, args.nodes, args.data_root)

    def timed(spec: str, texts: list[str]) -> tuple[float, list[dict[str, Any]]]:
        """Seconds to compress `texts` with `spec`, and each text's {"source_tokens", "ratio", "fidelity"}."""
        comp = compressors[spec]
        if isinstance(comp, CommitWorker):
            got = [comp.compress(text) for text in texts]
            return sum(g["seconds"] for g in got), [g | {"fidelity": None} for g in got]
        with scoring(spec):
            start = time.perf_counter()
            if spec.endswith("@alone"):
                memories = [comp.compress(text) for text in texts]
            else:
                memories = comp.compress_many(texts, batch_size=len(texts))
            seconds = time.perf_counter() - start
        return seconds, [{"source_tokens": m.source_tokens} | memory_budget(m) for m in memories]

    for spec in compressors:  # first-call costs outside the timings
        timed(spec, groups["SQuAD held-out paragraphs"][:args.batch])
    results: dict[str, Any] = {}
    for group, texts in groups.items():
        rows = {s: {"seconds": 0.0, "tokens": 0, "kept": 0.0, "ratios": [], "fidelities": []} for s in args.specs}
        for lo in tqdm(range(0, len(texts), args.batch), desc=group):
            for spec in compressors:
                seconds, got = timed(spec, texts[lo:lo + args.batch])
                rows[spec]["seconds"] += seconds
                for one in got:
                    rows[spec]["tokens"] += one["source_tokens"]
                    rows[spec]["kept"] += one["source_tokens"] / one["ratio"]
                    rows[spec]["ratios"].append(one["ratio"])
                    rows[spec]["fidelities"].append(one["fidelity"])
        base = rows[args.specs[0]]
        for row in rows.values():
            row["seconds_per_1k_tokens"] = round(1000 * row["seconds"] / row["tokens"], 3)
            row["vs_first"] = round(row["seconds"] / base["seconds"], 3)
            row["mean_ratio"] = round(row["tokens"] / row["kept"], 3)
        results[group] = {"texts": len(texts), "settings": rows}
    for comp in compressors.values():
        if isinstance(comp, CommitWorker):
            comp.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"command": "python -m benchmarks.kvzip_index_cost " + " ".join(argv or sys.argv[1:]), "commit": commit,
              "machine": platform.processor() or platform.machine(), "peak_rss_mb":
              round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    print("| texts | setting | s / 1k tokens | vs first | mean ratio |\n|---|---|---|---|---|")
    for group, r in results.items():
        for spec, row in r["settings"].items():
            print(f"| {group} ({r['texts']}) | {spec} | {row['seconds_per_1k_tokens']} | {row['vs_first']}x | {row['mean_ratio']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
