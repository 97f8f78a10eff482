"""The question read once: its prefill reads every stored entry (recording its attention), and only
the answer's tokens read the cut memories. Agreement with nothing evicted (the full memories' own
answer's mean log-likelihood per token) on techdocs-dev, against reading the question a second time
over the cut memories (the read budget before), 95% bootstrap intervals (2,000 resamples, seed 0).

    PYTHONPATH=. python docs/results/kvzip-read-budget/read-once/variants.py RUN_DIR 100 OUT.json SPEC...

RUN_DIR: a `benchmarks.kvzip_company` techdocs-dev run with the `full` policy. SPEC: KIND,SHARE,READ[,POOL]
with KIND `cut` (the question read again over the cut memories) or `once` (read once, over every
entry); SHARE the question's share of the budget, READ the read ratio, POOL a max-pool width over
each head's positions applied to the question's scores (SnapKV's clustering; 1: none). Written at
the commit that made reading once the default, as a prototype beside the library's
`selection.keep_read_entries`, which masks the same entries and then packs the cache.
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
from icae_rag.decoding.prefill import _prefill
from icae_rag.decoding.prompts import _layout
from icae_rag.eval.compare import agreement_logliks
from icae_rag.memories.kv_memory import entry_owners, prune_jointly
from icae_rag.models.hf_compat import cache_arg
from icae_rag.models.kv_attention import KvView


def pooled(asked: torch.Tensor, ctx: list, width: int) -> torch.Tensor:
    """The question's scores max-pooled over `width` neighbouring positions of each (layer, head)."""
    if width <= 1:
        return asked
    out, lo = [], 0
    for m in ctx:
        owner, pos = entry_owners(m.counts), m.positions.long()
        dense = torch.zeros(m.counts.numel(), m.source_tokens)
        dense[owner, pos] = asked[lo:lo + m.kept_entries]
        lo += m.kept_entries
        out.append(torch.nn.functional.max_pool1d(dense[None], width, stride=1, padding=width // 2)[0][owner, pos])
    return torch.cat(out)


def choice(asked: torch.Tensor, ctx: list, share: float, read: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per memory the entries kept (bool), and the selection scores (the read budget's mix)."""
    entries = round(sum(m.kept_entries for m in ctx) / read)
    stored = torch.cat([m.scores.float() for m in ctx])
    score = stored.argsort().argsort().float() / len(stored)
    score[asked.topk(min(round(entries * share), len(asked))).indices] = 2.0
    keep = torch.zeros(len(score), dtype=torch.bool)
    keep[score.topk(entries).indices] = True
    return list(keep.split([m.kept_entries for m in ctx])), score


@torch.no_grad()
def record(plain, ctx: list, question: str):
    """The prompt prefilled over every stored entry, the question's attention per entry, and each
    entry's (layer, head, cache column)."""
    prompt = _layout(plain, ctx, "answer", question)
    with plain.reading():
        pre = _prefill(plain, [prompt], record=True)
    offsets = [prompt.segments[0].shape[0]] * ctx[0].layers
    asked, where = [], []
    for m in ctx:
        owner, rank = m.entry_columns()
        layer, head = owner // m.kv_heads, owner % m.kv_heads
        scores, column = torch.empty(m.kept_entries), torch.empty(m.kept_entries, dtype=torch.long)
        for i in range(m.layers):
            at = layer == i
            column[at] = offsets[i] + rank[at]
            scores[at] = pre.view.scores[i][0, head[at], column[at]].float()
            offsets[i] += int(m.counts[i].max())
        asked.append(scores)
        where.append((layer, head, column))
    return pre, torch.cat(asked), where


@torch.no_grad()
def read_once(plain, pre, where, keeps: list[torch.Tensor], reference: str) -> float:
    """The reference's mean log-likelihood per token, the answer's tokens reading the kept entries."""
    dec = plain.decoder
    valid = [v.clone() for v in pre.view.valid]
    for (layer, head, column), keep in zip(where, keeps, strict=True):
        for i in range(len(valid)):
            at = ~keep & (layer == i)
            valid[i][0, head[at], column[at]] = False
    ids = plain.tokenize(reference.strip())
    total = [float(torch.log_softmax(pre.logits[0].float(), -1)[ids[0]])]
    if len(ids) > 1:
        n = len(ids) - 1
        with plain.reading():
            out = dec.model(inputs_embeds=dec.embed_ids(torch.tensor([ids[:-1]])), position_ids=pre.positions + torch.arange(n),
                            **cache_arg(pre.cache), use_cache=True, kv_view=KvView(valid=valid))
        total += torch.log_softmax(out.logits[0].float(), -1)[torch.arange(n), torch.tensor(ids[1:])].tolist()
        pre.cache.crop(-n)  # the prompt's cache again, for the next variant
    return statistics.mean(total)


def main() -> None:
    run, n, out_path = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    specs = [*sys.argv[4:], "full"]
    setup = json.loads((run / "nodes.json").read_text())
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    reference = {r["id"]: r["prediction"] for r in rows if r["policy"] == "full"}
    memories = Memories(setup["nodes"], run)
    questions = setup["questions"][:n]
    memories.full(sorted({i for q in questions for i in q["nodes"]}))
    plain = memories.full_compressor
    out: dict[str, list[float]] = {s: [] for s in specs}
    for q in tqdm(questions):
        ctx, ref = [memories._full[i] for i in q["nodes"]], reference[q["id"]]
        if not ref.strip():
            continue
        pre, asked, where = record(plain, ctx, q["question"])
        for spec in specs:
            if spec == "full":
                out[spec].append(read_once(plain, pre, where, [torch.ones(m.kept_entries, dtype=torch.bool) for m in ctx], ref))
                continue
            kind, share, read, *pool = spec.split(",")
            keeps, score = choice(pooled(asked, ctx, int(pool[0]) if pool else 1), ctx, float(share), float(read))
            if kind == "cut":
                cut = prune_jointly(ctx, int(sum(k.sum() for k in keeps)), scores=list(score.split([m.kept_entries for m in ctx])))
                out[spec].append(agreement_logliks(plain, [q["question"]], [cut], [ref])[0])
            else:
                out[spec].append(read_once(plain, pre, where, keeps, ref))
    random.seed(0)
    for spec, values in out.items():
        diff = [a - b for a, b in zip(values, out["full"], strict=True)]
        boot = sorted(statistics.mean(random.choices(diff, k=len(diff))) for _ in range(2000))
        print(f"{spec}: minus nothing evicted {statistics.mean(diff):+.4f} ({boot[50]:+.4f} to {boot[1949]:+.4f})")
    out_path.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
