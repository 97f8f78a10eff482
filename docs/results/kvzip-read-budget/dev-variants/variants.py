"""Read-budget variants on techdocs-dev: each one's agreement with nothing evicted (the full memories'
own answer's mean log-likelihood per token, read from the variant's cut memories), paired against
the read budget as it was (the question's attention choosing half, read 3x), 95% bootstrap intervals.

    python docs/results/kvzip-read-budget/dev-variants/variants.py RUN_DIR 100 SPEC...

RUN_DIR: a `benchmarks.kvzip_company` techdocs-dev run with the `full` policy (nodes.json, memories/,
answers.jsonl); `variants.json` is written there. SPEC, comma-separated:
- share=S: the question's share of the budget (its attention, every stored entry in view, as
  `selection.question_scores`); the stored scores fill the rest, as `selection.read_choice`;
- read=R: the read ratio;
- floor=F: each memory's every (layer, head) first keeps its best F by stored score;
- tok=T,agg=A: T of the budget as whole tokens (every layer and head), ranked by the question's
  attention per token (A=0 max, 1 mean, 2 mean rank);
- layers=stored or layers=even: each layer's share fixed beforehand (as one pass would have to):
  the stored scores' share of the layer (the question choosing S of it), or the question's part
  spread evenly over layers and the stored part by the stored scores' share;
- onepass=1: `KvzipCompressor.budget_contexts` itself (with ../one-pass/one-pass.patch applied to
  662c37a, the one-pass read budget; read 3x).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.kvzip_company import Memories
from icae_rag import load_compressor
from icae_rag.decoding.prompts import _layout
from icae_rag.decoding.selection import question_scores
from icae_rag.eval.compare import agreement_logliks
from icae_rag.memories.kv_memory import KvMemory, entry_owners, prune_jointly

BASE = "share=0.5,read=3"


def choose(asked: torch.Tensor, ctx: list[KvMemory], spec: dict[str, float | str]) -> list[KvMemory]:
    """The memories cut as `spec` says, from the question's attention `asked` (one score per entry)."""
    share, read = float(spec.get("share", 0.5)), float(spec.get("read", 3))
    entries = round(sum(m.kept_entries for m in ctx) / read)
    stored = torch.cat([m.scores.float() for m in ctx])
    rank = stored.argsort().argsort().float() / len(stored)  # in [0, 1): below every chosen mark
    choice = rank.clone()
    if "layers" in spec:
        return prune_jointly(ctx, entries, scores=_per_layer(asked, stored, rank, ctx, entries, share, spec["layers"]))
    if float(spec.get("floor", 0)):
        owners = torch.cat([entry_owners(m.counts) + 1000 * j for j, m in enumerate(ctx)])
        for owner in owners.unique():
            at = (owners == owner).nonzero().squeeze(1)
            best = stored[at].topk(max(1, round(len(at) * float(spec["floor"])))).indices
            choice[at[best]] = 3.0
    if float(spec.get("tok", 0)):
        token = torch.cat([m.positions.long() + 100_000 * j for j, m in enumerate(ctx)])
        tokens, which = token.unique(return_inverse=True)
        agg = {0: "amax", 1: "mean", 2: "mean"}[int(spec.get("agg", 0))]
        value = asked.argsort().argsort().float() if int(spec.get("agg", 0)) == 2 else asked
        per_token = torch.zeros(len(tokens)).scatter_reduce(0, which, value, agg, include_self=False)
        n_tokens = int(entries * float(spec["tok"])) // ctx[0].counts.numel()
        choice[torch.isin(which, per_token.topk(n_tokens).indices)] = 4.0
    by_question = asked.topk(int(entries * share)).indices
    choice[by_question] = choice[by_question].clamp(min=2.0)
    return prune_jointly(ctx, entries, scores=list(choice.split([m.kept_entries for m in ctx])))


def _per_layer(asked, stored, rank, ctx, entries, share, how) -> list[torch.Tensor]:
    """Each layer's share fixed beforehand; within it the question's top part, then the stored ranks."""
    layers = ctx[0].layers
    layer = torch.cat([entry_owners(m.counts) // m.kv_heads for m in ctx])
    if how == "even":
        part = int(entries * share)
        asked_n = [part // layers + (i < part % layers) for i in range(layers)]
        stored_n = torch.bincount(layer[stored.topk(entries - part).indices], minlength=layers).tolist()
        keep = [a + s for a, s in zip(asked_n, stored_n, strict=True)]
    else:
        keep = torch.bincount(layer[stored.topk(entries).indices], minlength=layers).tolist()
        asked_n = [int(k * share) for k in keep]
    choice = torch.zeros_like(rank)
    for i in range(layers):
        at = (layer == i).nonzero().squeeze(1)
        kept = torch.zeros(len(at), dtype=torch.bool)
        kept[asked[at].topk(asked_n[i]).indices] = True
        kept[rank[at].masked_fill(kept, -1.0).topk(keep[i] - asked_n[i]).indices] = True
        choice[at[kept]] = 1.0
    return list(choice.split([m.kept_entries for m in ctx]))


def main() -> None:
    run, n = Path(sys.argv[1]), int(sys.argv[2])
    specs = [BASE, *sys.argv[3:]]
    setup = json.loads((run / "nodes.json").read_text())
    texts, questions = setup["nodes"], setup["questions"][:n]
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    reference = {r["id"]: r["prediction"] for r in rows if r["policy"] == "full"}
    memories = Memories(texts, run)
    memories.full(sorted({i for q in questions for i in q["nodes"]}))
    plain = memories.full_compressor  # reads what it is given, as stored
    budget = load_compressor("kvzip:keep_fraction=1.0,read_ratio=3")
    parsed = {s: dict(kv.split("=") for kv in s.split(",")) for s in specs}
    out: dict[str, list[float]] = {s: [] for s in specs}
    for q in tqdm(questions):
        ctx = [memories._full[i] for i in q["nodes"]]
        with torch.no_grad():
            asked = torch.cat(question_scores(plain, _layout(plain, ctx, "answer", q["question"])))
        for s, spec in parsed.items():
            cut = budget.budget_contexts(ctx, question=q["question"]) if "onepass" in spec else choose(asked, ctx, spec)
            out[s].append(agreement_logliks(plain, [q["question"]], [cut], [reference[q["id"]]])[0])
    random.seed(0)
    for s, values in out.items():
        diff = [a - b for a, b in zip(values, out[BASE], strict=True)]
        boot = sorted(statistics.mean(random.choices(diff, k=len(diff))) for _ in range(2000))
        print(f"{s}: mean {statistics.mean(values):.4f}  minus {BASE} {statistics.mean(diff):+.4f} "
              f"({boot[50]:+.4f} to {boot[1949]:+.4f})")
    (run / "variants.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
