"""Index time of the default kvzip check with and without its look-up probes (issue 32: <= 1.5x).

The same passages (the first N 256-token nodes of techdocs-dev documents, split as the RAG bench splits
them) compressed by one `kvzip` compressor in alternating rounds: with the probes (the default) and
with them switched off (`scoring._probes` returning none, the check as it was before probes: the
repeat's worst block alone). Alternating rounds in one process share the machine's load, so the
ratio of their times is the cost of the probes. Writes results.json beside this file.

    python docs/results/kvzip-index-cost-probes/index_cost.py [N] [ROUNDS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter

import icae_rag.compressors.kvzip.scoring as scoring
from icae_rag import load_compressor
from icae_rag.data import get_dataset
from icae_rag.io import atomic_path


def main() -> None:
    """Time both arms on the same nodes, alternating, and write the per-1,000-token times and their ratio."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    docs = {ex.doc_id: ex.document for ex in get_dataset("techdocs-dev").load(None)}
    comp = load_compressor("kvzip")
    tokenizer = comp.decoder.tokenizer
    splitter = SentenceSplitter(chunk_size=256, chunk_overlap=0,
                                tokenizer=lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])
    nodes = splitter.get_nodes_from_documents([Document(text=docs[d]) for d in sorted(docs)])[:n]
    texts = [node.get_content() for node in nodes]
    tokens = sum(len(comp.tokenize(t)) for t in texts)
    probes = scoring._probes
    comp.compress_many(texts[:8])  # warm-up, not timed
    seconds = {"probes": 0.0, "repeat only": 0.0}
    ratios: dict[str, list[float]] = {}
    for _ in range(rounds):
        for arm in seconds:
            scoring._probes = probes if arm == "probes" else (lambda ids, surprisal: [])
            start = time.perf_counter()
            memories = comp.compress_many(texts)
            seconds[arm] += time.perf_counter() - start
            ratios[arm] = [float(m.metadata["kvzip_ratio"]) for m in memories]
            print(arm, round(seconds[arm], 1), flush=True)
    scoring._probes = probes
    per_1k = {arm: s / rounds / tokens * 1000 for arm, s in seconds.items()}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"passages": len(texts), "tokens": tokens, "rounds": rounds, "seconds_per_1k_tokens": per_1k,
           "probes_over_repeat_only": per_1k["probes"] / per_1k["repeat only"],
           "mean_ratio": {arm: sum(r) / len(r) for arm, r in ratios.items()}, "commit": commit,
           "command": "python docs/results/kvzip-index-cost-probes/index_cost.py " + " ".join(sys.argv[1:])}
    with atomic_path(Path(__file__).with_name("results.json")) as tmp:
        tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
