"""Per passage and budget: gold-answer log-prob drop vs candidate self-checks (cloze probes, repeat)."""

import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_lib import cloze_spans, target_logprobs

from icae_rag import load_compressor
from icae_rag.data import load_squad

torch.manual_seed(0)
N = int(sys.argv[1])
out_path = sys.argv[2]
source = sys.argv[3] if len(sys.argv) > 3 else "squad-train"
comp = load_compressor("kvzip:keep_fraction=1.0")
tok = comp.decoder.tokenizer
if source == "squad-train":
    ex = load_squad("train", root="/work/shared/data")
    by = defaultdict(list)
    for e in ex:
        if e.answers:
            by[e.context].append(e)
    paras = list(by.items())
    random.Random(0).shuffle(paras)
    paras = paras[:N]
else:
    import json as _j
    from types import SimpleNamespace as NS

    base = "" + str(Path(__file__).parents[3] / "icae_rag/data/techdocs") + "/"
    docs_ = {d["doc_id"]: d for d in map(_j.loads, open(base + "documents.jsonl"))}
    recs = [
        NS(
            doc_id=q["doc_id"],
            document=docs_[q["doc_id"]]["text"],
            question=q["question"],
            answers=q["answers"],
        )
        for q in map(_j.loads, open(base + "questions.jsonl"))
        if docs_[q["doc_id"]]["split"] == source
    ]
    # chunk docs into 256-token nodes; keep nodes that contain an answer
    paras = []
    docs = defaultdict(list)
    for r in recs:
        docs[r.doc_id].append(r)
    for _did, qs in docs.items():
        ids = tok(qs[0].document, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), 256):
            chunk = tok.decode(ids[s : s + 256])
            qq = [q for q in qs if any(a in chunk for a in q.answers)]
            if qq:
                paras.append((chunk, qq))
    random.Random(0).shuffle(paras)
    paras = paras[:N]
KEEPS = [1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8, 1 / 12, 1 / 16]
P = 8
rows = []
t0 = time.time()
for pi, (text, qs) in enumerate(paras):
    full = comp.compress(text)
    E = full.kept_entries
    mems = {1.0: full} | {k: full.pruned(round(E * k)) for k in KEEPS}
    levels = list(mems)
    # gold
    qs = qs[:6]
    gold_t = [tok(q.answers[0], add_special_tokens=False)["input_ids"] for q in qs]
    ctxs, qus, tgs = [], [], []
    for lv in levels:
        for q, g in zip(qs, gold_t, strict=False):
            ctxs.append([mems[lv]])
            qus.append(q.question)
            tgs.append(g)
    lp = target_logprobs(comp, ctxs, qus, tgs)
    gold = {}
    i = 0
    for lv in levels:
        vals = []
        for g in gold_t:
            vals.append(float(lp[i][torch.arange(len(g)), torch.tensor(g)].mean()))
            i += 1
        gold[lv] = vals
    # cloze probes
    spans = cloze_spans(text, P)
    cq = [f'In the context, which words come right after "{pre}"?' for pre, _ in spans]
    ct = [tok(tg, add_special_tokens=False)["input_ids"][:4] for _, tg in spans]
    ctxs, qus, tgs = [], [], []
    for lv in levels:
        for q, g in zip(cq, ct, strict=False):
            ctxs.append([mems[lv]])
            qus.append(q)
            tgs.append(g)
    lp = target_logprobs(comp, ctxs, qus, tgs)
    clo = {}
    i = 0
    base = lp[: len(cq)]
    for lv in levels:
        ll, agree, kl = [], [], []
        for j, g in enumerate(ct):
            a = lp[i]
            b = base[j]
            ll.append(float(a[torch.arange(len(g)), torch.tensor(g)].mean()))
            agree.append(float(torch.minimum(a.exp(), b.exp()).sum(-1).mean()))
            kl.append(float((b.exp() * (b - a)).sum(-1).mean()))
            i += 1
        clo[lv] = {"ll": ll, "agree": agree, "kl": kl}
    # repeat (teacher forced)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lp = target_logprobs(
        comp,
        [[mems[lv]] for lv in levels],
        [None] * len(levels),
        [ids] * len(levels),
        mode="repeat",
    )
    rep = {}
    for k, lv in enumerate(levels):
        a, b = lp[k], lp[0]
        rep[lv] = {
            "ll": float(a[torch.arange(len(ids)), torch.tensor(ids)].mean()),
            "agree": float(torch.minimum(a.exp(), b.exp()).sum(-1).mean()),
            "kl": float((b.exp() * (b - a)).sum(-1).mean()),
        }
    rows.append(
        {"text_tokens": len(ids), "gold": gold, "cloze": clo, "repeat": rep, "spans": spans}
    )
    print(
        pi,
        len(ids),
        {
            f"{1 / k:.0f}x": round(sum(gold[k]) / len(gold[k]) - sum(gold[1.0]) / len(gold[1.0]), 2)
            for k in KEEPS
        },
        {f"{1 / k:.0f}x": round(sum(clo[k]["agree"]) / P, 2) for k in KEEPS},
        round(time.time() - t0),
        flush=True,
    )
    json.dump(rows, open(out_path, "w"))
