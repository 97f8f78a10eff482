"""How many test questions raw text answers on the extended techdocs split (issue 32 item 2).

The RAG bench's raw mode alone (build_query_engine defaults: top 3 x 256-token nodes over all 22 test
documents, best last, 32 new tokens) on a seeded sample of the test split; the share answered, with its
95% interval, times the split's size estimates how many test questions raw answers. Writes results.json
and progress.jsonl (resumable) beside this file.

    python docs/results/techdocs-raw-rate/raw_rate.py [LIMIT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.llamaindex_rag import RagBenchOptions, load_corpus, run_rag_bench
from icae_rag import load_compressor
from icae_rag.data import get_dataset
from icae_rag.eval.record import environment
from icae_rag.io import atomic_path

HERE = Path(__file__).parent


def main() -> None:
    """Answer the sample with raw text only and write the rate and the estimate for the whole split."""
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    opts = RagBenchOptions(dataset="techdocs", limit=limit, documents=22, compressors=[], top_k=3, node_tokens=256,
                           longllmlingua=False, references=["raw"], out=str(HERE))
    documents, items, record = load_corpus(opts)
    raw = load_compressor("raw")
    out = run_rag_bench(documents, items, [], raw, opts, progress_file=HERE / "progress.jsonl")
    split = len(list(get_dataset("techdocs").load(None)))
    contained = out["modes"]["raw"]["contained"]
    result = {"record": record, "split_questions": split, "raw_contained": contained,
              "estimated_raw_answered_on_split": {k: round(contained[k] * split) for k in ("mean",)}
              | {"ci95": [round(v * split) for v in contained["ci95"]]},
              "nodes": out["nodes"], "environment": environment(opts.seed),
              "command": "python docs/results/techdocs-raw-rate/raw_rate.py " + " ".join(sys.argv[1:]),
              "questions": [{"id": q["id"], "prediction": q["predictions"]["raw"], "answers": q["answers"]}
                            for q in out["questions"]]}
    with atomic_path(HERE / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k not in ("questions", "environment")}, indent=1))


if __name__ == "__main__":
    main()
