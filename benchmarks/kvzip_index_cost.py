"""Index-time cost of kvzip settings: compress seconds per 1,000 source tokens, measured in one run.

Not a test: it times real work. Texts are compressed one at a time, every setting on a text before
the next text, so all settings see the same machine load; the report gives each setting's seconds
per 1,000 tokens and its ratio to the first setting, per text group. Groups: 256-token nodes of the
`techdocs` test documents, paragraphs of the held-out SQuAD articles, and the first 2,048 tokens of
each techdocs test document (scored in windows).

    python -m benchmarks.kvzip_index_cost --spec kvzip:ratio=4 --spec kvzip --nodes 20 --out bench-cost.json

A spec ending in "@eager" scores with the eager attention path (every weight materialised), as kvzip
did before its scoring pass used the fused kernel: the way to compare with that cost in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
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


def main(argv: list[str] | None = None) -> int:
    """Time every spec on every text, print a Markdown table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", action="append", dest="specs", required=True, help="compressor spec; the first is the base")
    p.add_argument("--nodes", type=int, default=20, help="texts per short-text group")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from tqdm.auto import tqdm

    from icae_rag import kv_attention, load_compressor
    from icae_rag.compressors.kvzip import memory_budget

    def scoring(spec: str) -> contextlib.AbstractContextManager:
        """The eager scoring path for an "@eager" spec, the default path otherwise."""
        if not spec.endswith("@eager"):
            return contextlib.nullcontext()
        return mock.patch.object(kv_attention, "_has_lse_kernel", lambda query: False)

    compressors = {s: load_compressor(s.removesuffix("@eager"), device="cpu") for s in args.specs}
    tokenizer = next(iter(compressors.values())).decoder.tokenizer
    groups = text_groups(tokenizer, args.nodes, args.data_root)
    for spec, c in compressors.items():  # first-call costs outside the timings
        with scoring(spec):
            c.compress(groups["SQuAD held-out paragraphs"][0])
    results: dict[str, Any] = {}
    for group, texts in groups.items():
        rows = {s: {"seconds": 0.0, "tokens": 0, "kept": 0.0, "ratios": [], "fidelities": []} for s in args.specs}
        for text in tqdm(texts, desc=group):
            for spec, comp in compressors.items():
                with scoring(spec):
                    start = time.perf_counter()
                    memory = comp.compress(text)
                    rows[spec]["seconds"] += time.perf_counter() - start
                rows[spec]["tokens"] += memory.source_tokens
                budget = memory_budget(memory)
                rows[spec]["kept"] += memory.source_tokens / budget["ratio"]
                rows[spec]["ratios"].append(budget["ratio"])
                rows[spec]["fidelities"].append(budget["fidelity"])
        base = rows[args.specs[0]]
        for row in rows.values():
            row["seconds_per_1k_tokens"] = round(1000 * row["seconds"] / row["tokens"], 3)
            row["vs_first"] = round(row["seconds"] / base["seconds"], 3)
            row["mean_ratio"] = round(row["tokens"] / row["kept"], 3)
        results[group] = {"texts": len(texts), "settings": rows}
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
