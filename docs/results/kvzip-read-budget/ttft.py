"""Time to first token of the read budget (the default), against the adaptive check's memories read as stored and raw text.

One run, modes interleaved per question so they see the same machine load. Questions and their top-3
nodes (best last) come from a `benchmarks.kvzip_company` run's nodes.json; every node is compressed
by the default (`kvzip`: every entry stored, each question reading 1/2.5 of its memories together)
and by the adaptive check (`kvzip:fidelity=0.96`, read as stored). Each answer is one greedy token; TTFT is the time from the call
to the first token: the prompt built and prefilled (for the read budget: the question's prefill over
every stored entry, recording its attention, and the cache cut to the chosen entries). Also the distribution of what each memory kept under the read budget.

    python docs/results/kvzip-read-budget/ttft.py RUN_DIR N OUT.json
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from icae_rag import load_compressor

run, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)
setup = json.loads((run / "nodes.json").read_text())
texts, questions = setup["nodes"], setup["questions"][:n]
wanted = sorted({i for q in questions for i in q["nodes"]})
# ttft.json was written at d28db2d (read budget 3x, the adaptive check as "kvzip"), ttft-default.json
# with the default read budget (2.5x) and the prompt prefix kept run, ttft-read-once.json once the
# question was read once (over every stored entry) instead of twice.
modes = {"raw": load_compressor("raw"), "default (read budget 2.5x)": load_compressor("kvzip"),
         "adaptive check": load_compressor("kvzip:fidelity=0.96")}
memories: dict[str, dict[int, object]] = {}
for name, comp in modes.items():
    if comp.kind == "raw":
        memories[name] = {i: texts[i] for i in wanted}
        continue
    start = time.perf_counter()
    memories[name] = dict(zip(wanted, comp.compress_many([texts[i] for i in wanted]), strict=True))
    print(f"{name}: compressed {len(wanted)} nodes in {time.perf_counter() - start:.0f} s", flush=True)
ttft: dict[str, list[float]] = {name: [] for name in modes}
ratio: dict[str, list[float]] = {name: [] for name in modes}
for q in [questions[0], *questions]:  # the first twice: a warm-up, not kept
    for name, comp in modes.items():
        start = time.perf_counter()
        answer = comp.answer(q["question"], [memories[name][i] for i in q["nodes"]], max_new_tokens=1)
        # Counted from the call: anything done while the prompt is built is before decoding starts.
        ttft[name].append(time.perf_counter() - start - answer.seconds + answer.prefill_seconds)
        ratio[name].append(answer.compression_ratio)
# What each memory kept of the read budget, per question (the distribution of per-memory ratios).
budget = modes["default (read budget 2.5x)"]
per_memory = [m.compression_ratio for q in questions for m in budget.budget_contexts(
    [memories["default (read budget 2.5x)"][i] for i in q["nodes"]], question=q["question"])]
result = {"questions": n, "ttft_seconds_median": {k: statistics.median(v[1:]) for k, v in ttft.items()},
          "ttft_seconds_mean": {k: statistics.mean(v[1:]) for k, v in ttft.items()},
          "read_ratio_mean": {k: statistics.mean(v[1:]) for k, v in ratio.items()},
          "read_budget_per_memory_ratio": {"min": min(per_memory), "p10": statistics.quantiles(per_memory, n=10)[0],
                                            "median": statistics.median(per_memory),
                                            "p90": statistics.quantiles(per_memory, n=10)[-1], "max": max(per_memory),
                                            "memories": len(per_memory)},
          "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
          "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
          "command": "python " + " ".join(sys.argv)}
raw = result["ttft_seconds_median"]["raw"]
result["raw_over_mode_median"] = {k: raw / v for k, v in result["ttft_seconds_median"].items()}
out.write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
