"""kvzip storage and index-time cost: bytes per source token, seconds per 1,000 tokens, peak memory.

Compresses held-out SQuAD paragraphs (the RAG-node case) and long WikiText-2 test texts (the
windowed case) with each storage type, in one run, on the default decoder:

    python -m benchmarks.kvzip_storage --paragraphs 40 --long-tokens 2048 8192 --out docs/results/kvzip-storage

Each row also splits the bytes per source token by stored tensor (codes, scales, positions, scores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from icae_rag.errors import IcaeRagError
from icae_rag.eval.record import PeakRss, environment, write_report

STORAGES = ("float16", "int8", "int4", "int2")


def measure(compressor: Any, texts: list[str]) -> dict[str, Any]:
    """Compress `texts` one by one; bytes, tokens, seconds and the peak resident memory rise."""
    tokens = stored = 0
    entries = 0.0
    by_tensor: dict[str, int] = {}
    with PeakRss() as mem:
        start = time.perf_counter()
        for text in texts:
            memory = compressor.compress(text)
            tokens += memory.source_tokens
            stored += memory.nbytes()
            for name, t in memory.tensors().items():
                by_tensor[name] = by_tensor.get(name, 0) + t.numel() * t.element_size()
            entries += memory.kept_entries
        seconds = time.perf_counter() - start
    layers_heads = memory.layers * memory.kv_heads
    return {"texts": len(texts), "source_tokens": tokens, "bytes_per_source_token": stored / tokens,
            "seconds_per_1000_tokens": 1000 * seconds / tokens, "peak_rss_rise_mb": mem.peak_mb,
            "kept_share": entries / (tokens * layers_heads),
            "bytes_per_source_token_by_tensor": {k: round(v / tokens, 2) for k, v in sorted(by_tensor.items())}}


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and write results.json / results.md into --out."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.kvzip_storage", description=__doc__.split("\n")[0])
    p.add_argument("--paragraphs", type=int, default=40, help="held-out SQuAD paragraphs")
    p.add_argument("--long-tokens", type=int, nargs="*", default=[2048, 8192], help="lengths of long texts")
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--storages", nargs="+", default=list(STORAGES), choices=STORAGES)
    p.add_argument("--quant-group", type=int, help="int4 / int2 group size (default: KvzipConfig's)")
    p.add_argument("--data-root", help="the shared data folder (default: $ICAE_RAG_DATA or ../shared/data)")
    p.add_argument("--out", default="bench-kvzip-storage")
    a = p.parse_args(argv)
    try:
        from icae_rag import data, new_compressor

        paragraphs = list(dict.fromkeys(ex.context for ex in data.load_squad("heldout", root=a.data_root)))
        paragraphs = paragraphs[: a.paragraphs]
        wiki = "\n".join(data.load_text("wikitext2-test", root=a.data_root))
        rows = []
        for storage in a.storages:
            group = {"quant_group": a.quant_group} if a.quant_group and storage in ("int4", "int2") else {}
            comp = new_compressor("kvzip", ratio=a.ratio, storage=storage, **group)
            ids = comp.tokenize(wiki)
            cases = {"squad paragraphs": paragraphs} | {
                f"wikitext {n} tokens": [comp.decoder.tokenizer.decode(ids[:n])] for n in a.long_tokens}
            for case, texts in cases.items():
                rows.append({"storage": storage, "case": case} | measure(comp, texts))
    except IcaeRagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines = ["| storage | texts | source tokens | bytes / source token | s / 1,000 tokens | peak RSS rise MB | kept share |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['storage']} | {r['case']} ({r['texts']}) | {r['source_tokens']} | "
                     f"{r['bytes_per_source_token']:.0f} | {r['seconds_per_1000_tokens']:.2f} | "
                     f"{r['peak_rss_rise_mb']:.0f} | {r['kept_share']:.3f} |")
    env = environment(0)
    md = ["# kvzip storage and index-time cost", "", f"commit `{env['git_commit']}`, {env['hardware']['processor']} "
          f"({env['hardware']['cpu_count']} cores), torch {env['versions']['torch']}, ratio {a.ratio:g}", "", *lines]
    write_report(Path(a.out), {"suite": "kvzip-storage", "options": vars(a), "environment": env, "rows": rows},
                 "\n".join(md) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
