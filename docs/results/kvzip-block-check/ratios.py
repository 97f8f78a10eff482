"""Chosen ratios of the mean check and the block check at several fidelities, on calibration data only:
SQuAD training-split paragraphs, 512-token nodes of SQuAD training articles, and 256-token nodes
of the techdocs dev documents. No answers are read: this shows what each check asks of each kind
of passage."""

import json
import random
from collections import defaultdict
from pathlib import Path

import block_check

from icae_rag import load_compressor
from icae_rag.compressors.kvzip import memory_budget
from icae_rag.data import load_squad

ROOT = "/work/shared/data"
FIDELITIES = (0.95, 0.96, 0.97)


def passages(tok) -> dict[str, list[str]]:
    """12 paragraphs, 8 article nodes of 512 tokens, 8 techdocs-dev nodes of 256 tokens (seed 0)."""
    rng = random.Random(0)
    by_title = defaultdict(list)
    for e in load_squad("train", root=ROOT):
        if e.context not in by_title[e.title]:
            by_title[e.title].append(e.context)
    titles = sorted(by_title)
    rng.shuffle(titles)
    paragraphs = [by_title[t][0] for t in titles[:12]]
    nodes = []
    for t in titles[12:20]:
        ids = tok("\n\n".join(by_title[t]), add_special_tokens=False)["input_ids"]
        nodes.append(tok.decode(ids[:512]))
    base = Path(__file__).parents[3] / "icae_rag/data/techdocs"
    docs = [d for d in map(json.loads, open(base / "documents.jsonl")) if d["split"] == "dev"]
    tech = []
    for d in docs:
        ids = tok(d["text"], add_special_tokens=False)["input_ids"]
        tech += [tok.decode(ids[s:s + 256]) for s in range(0, len(ids) - 256, 256)]
    rng.shuffle(tech)
    return {"squad-paragraph": paragraphs, "squad-node-512": nodes, "techdocs-dev-node-256": tech[:8]}


def run(out: str) -> None:
    """Mean chosen ratio per (check, fidelity, kind of passage), written to `out`."""
    results = {}
    sets = None
    for check in ("mean", "block"):
        (block_check.use_block_check if check == "block" else block_check.use_mean_check)()
        for fidelity in FIDELITIES:
            comp = load_compressor(f"kvzip:fidelity={fidelity}")
            sets = sets or passages(comp.decoder.tokenizer)
            for kind, texts in sets.items():
                ratios = [memory_budget(m)["ratio"] for m in comp.compress_many(texts)]
                results[f"{check} {fidelity} {kind}"] = dict(mean_ratio=sum(ratios) / len(ratios), ratios=ratios)
                print(check, fidelity, kind, round(sum(ratios) / len(ratios), 2), flush=True)
    Path(out).write_text(json.dumps(dict(block=block_check.BLOCK, seed=0, results=results), indent=1))
