"""Side check for the int4 / int2 storages: the same kept entries stored each way, read by the same decoder.

Compresses 20 held-out SQuAD paragraphs at 4x once (float32), stores those entries as float16, int8,
int4 and int2 (group 32 and 128), and compares with float32: relative RMS error of the keys the
reader sees and of the values, greedy answers (24 tokens) identical to float32's, answer contained.

    OMP_NUM_THREADS=1 ICAE_RAG_DATA=/work/shared/data python docs/results/kvzip-storage-quant/measure_quality.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields

import torch

from icae_rag import data, new_compressor
from icae_rag.eval.metrics import answer_contained
from icae_rag.kv_attention import rotary

VARIANTS = [("float16", 128), ("int8", 128), ("int4", 32), ("int4", 128), ("int2", 32), ("int2", 128)]


def main() -> None:
    examples = {}
    for ex in data.load_squad("heldout"):
        if ex.answers and ex.context not in examples:
            examples[ex.context] = ex
    examples = list(examples.values())[:20]
    comp = new_compressor("kvzip", ratio=4, storage="float32")
    rot = rotary(comp.decoder.model)
    rows = {f"{s}" + (f" g{g}" if s in ("int4", "int2") else ""): [] for s, g in VARIANTS}
    rows["float32"] = []
    for ex in examples:
        exact = comp.compress(ex.context)
        keys, values = exact.float_entries()
        skip = ("keys", "values", "positions", "counts", "key_scale", "value_scale", "quant")
        provenance = {f.name: getattr(exact, f.name) for f in fields(exact) if f.name not in skip}
        reference = comp.answer(ex.question, [exact], max_new_tokens=24)
        rows["float32"].append({"same_answer": 1.0, "contained": answer_contained(reference.text, ex.answers)})
        for storage, group in VARIANTS:
            m = type(exact).from_entries(keys, values, exact.positions, exact.counts, storage, quant_group=group,
                                         rotary_emb=rot, **provenance)
            k, v = m.float_entries(rot)
            ans = comp.answer(ex.question, [m], max_new_tokens=24)
            name = storage + (f" g{group}" if storage in ("int4", "int2") else "")
            rows[name].append({
                "key_rel_rms": float((k - keys).pow(2).mean().sqrt() / keys.pow(2).mean().sqrt()),
                "value_rel_rms": float((v - values).pow(2).mean().sqrt() / values.pow(2).mean().sqrt()),
                "same_answer": float(ans.token_ids == reference.token_ids),
                "contained": answer_contained(ans.text, ex.answers)})
        print(len(rows["float32"]), file=sys.stderr, flush=True)
    summary = {name: {k: round(sum(r[k] for r in rs) / len(rs), 4) for k in rs[0]} for name, rs in rows.items()}
    print(json.dumps({"questions": len(examples), "ratio": 4, "summary": summary}, indent=1))


if __name__ == "__main__":
    with torch.no_grad():
        main()
