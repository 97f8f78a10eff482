"""Reading stored kvzip memories: load time per store and storage, and time to first token, in one run.

Compresses held-out SQuAD paragraphs once per storage (fixed 4x), puts them in a SQLite and a Lance
store, then, paragraph by paragraph and every setting on a paragraph before the next (so all see the
same machine load), times:

- `load`: `store.get` of one memory (index lookup, file or row read, checksum);
- `layout`: the decoder-ready cache columns of that memory (de-quantisation and rotation included);
- `ttft`: a question answered from that memory as the RAG path does it: `store.get` + prefill to the
  first token (`Answer.prefill_seconds`; greedy, one new token).

It also checks that a batch naming the same text twice loads it once (the store's hit count).

    python -m benchmarks.memory_load --paragraphs 20 --out docs/results/kvzip-memory-load
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from icae_rag.eval.record import PeakRss, environment, write_report

STORAGES = ("float16", "int4")
QUESTION = "What is this passage about?"


def main(argv: list[str] | None = None) -> int:
    """Time loads, layouts and first tokens for every store and storage; write JSON and Markdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paragraphs", type=int, default=20)
    p.add_argument("--storages", nargs="+", default=list(STORAGES))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from icae_rag import data, load_compressor
    from icae_rag.models import kv_attention
    from icae_rag.stores import open_store

    texts = list(dict.fromkeys(ex.context for ex in data.load_squad("heldout", root=a.data_root)))[:a.paragraphs]
    comps = {s: load_compressor(f"kvzip:ratio=4,storage={s}", device="cpu") for s in a.storages}
    dec = next(iter(comps.values())).decoder
    rotary = kv_attention.rotary(dec.model)
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="icae-rag-load-") as tmp:
        stores = {"sqlite": open_store(Path(tmp) / "sqlite"), "lance": open_store(f"lance://{tmp}/mem.lance")}
        for comp in comps.values():
            memories = comp.compress_many(texts, progress=True)
            for store in stores.values():
                for text, memory in zip(texts, memories, strict=True):
                    store.put(text, comp, memory)
        for store in stores.values():  # first-call costs outside the timings
            for comp in comps.values():
                comp.answer(QUESTION, [store.get(texts[0], comp)], max_new_tokens=1)
        with PeakRss() as mem:
            for text in tqdm(texts, desc="load, layout, first token"):
                for store_name, store in stores.items():
                    for storage, comp in comps.items():
                        row = rows.setdefault(f"{store_name} {storage}", {"load": [], "layout": [], "ttft": []})
                        start = time.perf_counter()
                        memory = store.get(text, comp)
                        row["load"].append(time.perf_counter() - start)
                        start = time.perf_counter()
                        memory.cache_tensors(0, rotary, dec.dtype, dec.device)
                        row["layout"].append(time.perf_counter() - start)
                        start = time.perf_counter()
                        answer = comp.answer(QUESTION, [store.get(text, comp)], max_new_tokens=1)
                        row["ttft"].append(time.perf_counter() - start - answer.seconds + answer.prefill_seconds)
        twice = {}
        for store_name, store in stores.items():
            comp = comps[a.storages[0]]
            before = store.stats.hits
            store.get_or_compress([texts[0], texts[0]], comp)
            twice[store_name] = store.stats.hits - before
            store.close()
    results: dict[str, Any] = {"paragraphs": len(texts), "threads": torch.get_num_threads(),
                               "peak_rss_rise_mb": round(mem.peak_mb, 1), "loads_for_one_text_named_twice": twice,
                               "settings": {k: {m: {"median_ms": round(1000 * statistics.median(v), 2),
                                                    "mean_ms": round(1000 * statistics.fmean(v), 2)}
                                                for m, v in r.items()} for k, r in rows.items()}}
    base = a.storages[0]
    for store_name in stores:
        for storage in a.storages[1:]:
            r, b = results["settings"][f"{store_name} {storage}"], results["settings"][f"{store_name} {base}"]
            r["ttft_vs_" + base] = round(r["ttft"]["median_ms"] / b["ttft"]["median_ms"], 3)
            r["load_vs_" + base] = round(r["load"]["median_ms"] / b["load"]["median_ms"], 3)
    lines = [f"{len(texts)} held-out SQuAD paragraphs, kvzip 4x, {torch.get_num_threads()} torch thread(s); "
             "median milliseconds per memory.", "",
             "| store | storage | load | layout | TTFT (load + prefill) | TTFT / " + base + " |",
             "|---|---|---:|---:|---:|---:|"]
    for key, r in results["settings"].items():
        store_name, storage = key.split()
        lines.append(f"| {store_name} | {storage} | {r['load']['median_ms']} | {r['layout']['median_ms']} | "
                     f"{r['ttft']['median_ms']} | {r.get('ttft_vs_' + base, 1.0)}x |")
    lines += ["", f"Loads when a batch names one text twice: {twice}."]
    results["environment"] = environment(0)
    results["command"] = "python -m benchmarks.memory_load " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(Path(a.out), results, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
