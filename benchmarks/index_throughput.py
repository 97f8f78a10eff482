"""Indexing throughput: nodes per second of `icae-rag index` with 1 and 2 workers, and their ratio.

Not a test: it times real work. Nodes are paragraphs of the 13 held-out SQuAD articles (v1.1 dev,
the project's evaluation split). Each configuration writes a fresh store, then runs again over the
same store (which writes nothing): the second run's time is the fixed cost (start-up, key checks),
and `nodes / (first - second)` the compression throughput once workers are up.

    python benchmarks/index_throughput.py --nodes 400 --compressor kvzip --workers 1,2 --out bench-index.json

On a Ray cluster (RAY_ADDRESS set, stores on an object store), e.g. 4 GPU workers:

    RAY_ADDRESS=auto python benchmarks/index_throughput.py --nodes 20000 --workers 1,4 \\
        --gpus-per-worker 1 --device cuda --store-base s3://bucket/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import uuid
from pathlib import Path
from typing import Any


def heldout_paragraphs(n: int, root: str | None) -> list[str]:
    """The first `n` distinct paragraphs of the held-out SQuAD articles, in file order."""
    from icae_rag.data import load_squad

    paragraphs = list(dict.fromkeys(e.context for e in load_squad("heldout", root=root)))
    if len(paragraphs) < n:
        raise SystemExit(f"only {len(paragraphs)} held-out paragraphs exist; ask for --nodes <= {len(paragraphs)}")
    return paragraphs[:n]


def run(engine: str, workers: int, nodes: list[str], args: argparse.Namespace, store_base: str) -> dict[str, Any]:
    """Index `nodes` into a fresh store twice with one configuration; the timings of both runs."""
    from icae_rag.indexing import index

    uri = f"{store_base.rstrip('/')}/{engine}-{workers}-{uuid.uuid4().hex[:8]}.lance"
    options: dict[str, Any] = {"concurrency": workers, "batch_size": args.batch_size, "device": args.device,
                               "num_cpus": args.cpus_per_worker}
    if engine == "ray":
        options["num_gpus"] = args.gpus_per_worker
    first = index(nodes, args.compressor, uri, engine=engine, **options)
    again = index(nodes, args.compressor, uri, engine=engine, **options)
    if first.written != len(nodes) or again.written != 0:
        raise SystemExit(f"{engine} x{workers}: wrote {first.written} then {again.written}, expected "
                         f"{len(nodes)} then 0")
    busy = first.seconds - again.seconds
    return {"engine": engine, "workers": workers, "nodes": len(nodes), "seconds": round(first.seconds, 3),
            "nodes_per_second": round(first.nodes_per_second, 3), "rerun_seconds": round(again.seconds, 3),
            "compress_nodes_per_second": round(len(nodes) / busy, 3) if busy > 0 else None, "store": uri}


def main(argv: list[str] | None = None) -> int:
    """Run the configurations, print a Markdown table, write the results as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=400, help="held-out SQuAD paragraphs to index (<= 856)")
    p.add_argument("--compressor", default="kvzip", help="compressor spec or checkpoint dir (default kvzip)")
    p.add_argument("--workers", default="1,2", help="Ray worker counts, comma separated (default 1,2)")
    p.add_argument("--no-local", action="store_true", help="skip the single-process local engine run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray cluster started here (default: all)")
    p.add_argument("--store-base", help="folder or object-store prefix for the stores (default: a temp dir)")
    p.add_argument("--data", help="shared data folder (default $ICAE_RAG_DATA or ../shared/data)")
    p.add_argument("--out", default="bench-index.json")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]

    import tempfile

    import ray
    import torch

    torch.set_num_threads(max(1, int(args.cpus_per_worker)))  # the local engine gets what one actor gets
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    nodes = heldout_paragraphs(args.nodes, args.data)
    store_base = args.store_base or tempfile.mkdtemp(prefix="icae-rag-index-bench-")
    results = [run("local", 1, nodes, args, store_base)] if not args.no_local else []
    results += [run("ray", w, nodes, args, store_base) for w in workers]
    ray_rates = {r["workers"]: r["nodes_per_second"] for r in results if r["engine"] == "ray"}
    ratio = (ray_rates[max(ray_rates)] / ray_rates[min(ray_rates)]) if len(ray_rates) > 1 else None
    report = {"results": results, "ratio": round(ratio, 3) if ratio else None,
              "ratio_of": f"ray x{max(ray_rates)} / ray x{min(ray_rates)}" if ratio else None,
              "compressor": args.compressor, "batch_size": args.batch_size, "cpus": os.cpu_count(),
              "cluster_cpus": ray.cluster_resources().get("CPU"), "cluster_gpus": ray.cluster_resources().get("GPU", 0),
              "python": platform.python_version(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("| engine | workers | nodes | seconds | nodes/s | re-run s | nodes/s once up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['engine']} | {r['workers']} | {r['nodes']} | {r['seconds']} | {r['nodes_per_second']} | "
              f"{r['rerun_seconds']} | {r['compress_nodes_per_second']} |")
    if ratio:
        print(f"\nratio {report['ratio_of']}: {report['ratio']:.2f}")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
