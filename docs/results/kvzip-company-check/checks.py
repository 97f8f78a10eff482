"""Check values of every node at every ladder ratio, for several kinds of check (an experiment).

For each node of a `benchmarks.kvzip_company` run (its nodes.json and cached full memories), and for
each ratio of kvzip's ladder, the candidate memory (the node's full memory pruned to 1/ratio by its
scores) is compared with the full memory by:
- `repeat`: the library's check (teacher-forced repeat of the node, read alone; worst 64-token block);
- `probe:<company>`: M cloze probes made from the node's own most surprising tokens (surprisal under
  the decoder reading the node's text from its start): the repeat prompt, then a cue (the 12 tokens
  before the surprising one) and the next 4 tokens teacher-forced; the overlap of the candidate's
  and the full memory's distributions over those 4 tokens, per probe. The memories read before the
  node (`company`): none (`alone`), two fixed distractor texts (`fixed`), the node's own tokens
  shuffled (`shuffled`), or the node's two nearest neighbours in the corpus by MiniLM (`neighbours`).
Writes checks.jsonl (one line per node); resumable.

    python docs/results/kvzip-company-check/checks.py /work/exp/dev-a OUT.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks.kvzip_company import Memories
from icae_rag.compressors.kvzip import LADDER
from icae_rag.compressors.kvzip.check import _overlap, _repeat_probs
from icae_rag.decoding import build_prompt, target_logits

M, CUE, SPAN = 8, 12, 4
# Two fixed distractors: man-page text of tools in no evaluation set (ls, cp), rendered as techdocs does.
FIXED = [Path(__file__).with_name("distractor-ls.txt"), Path(__file__).with_name("distractor-cp.txt")]


def surprisal(comp, ids: list[int]) -> torch.Tensor:
    """-log p(token | the node's text before it), after the prompt prefix, for every token."""
    prefix = comp._prefix_ids()
    x = torch.tensor([prefix + ids])
    logits = comp.decoder.model(input_ids=x).logits[0, len(prefix) - 1:-1].float()
    return -torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None])[:, 0]


def probes(ids: list[int], s: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Up to M (cue, span): the most surprising tokens with a full cue before them, apart from each other."""
    chosen: list[int] = []
    for t in sorted(range(CUE, len(ids) - SPAN + 1), key=lambda t: -float(s[t])):
        if all(abs(t - u) >= SPAN + CUE // 2 for u in chosen):
            chosen.append(t)
        if len(chosen) == M:
            break
    return [(ids[t - CUE:t], ids[t:t + SPAN]) for t in sorted(chosen)]


def probe_probs(comp, contexts: list, rows: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """Per probe, the decoder's distributions over its span, reading `contexts` in the repeat prompt."""
    prompt = build_prompt(comp, contexts, mode="repeat")
    logits = target_logits(comp, [prompt] * len(rows), [cue + span for cue, span in rows])
    return [torch.softmax(x[CUE:], -1) for x in logits]


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    data = json.loads((run / "nodes.json").read_text())
    texts, questions = data["nodes"], data["questions"]
    wanted = sorted({i for q in questions for i in q["nodes"]})
    mem = Memories(texts, run)
    mem.full(wanted)
    comp = mem.full_compressor
    tok = comp.decoder.tokenizer
    done = {json.loads(line)["node"] for line in out.read_text().splitlines()} if out.exists() else set()
    fixed = [comp.compress(p.read_text()) for p in FIXED]
    from icae_rag.backbones import load_encoder

    encoder = load_encoder()
    emb = torch.tensor(encoder.model.encode(texts, normalize_embeddings=True))
    sims = emb @ emb.T
    sims.fill_diagonal_(-1)
    with torch.no_grad():
        for i in tqdm([i for i in wanted if i not in done], desc="nodes"):
            ids = comp.tokenize(texts[i])
            rows = probes(ids, surprisal(comp, ids))
            shuffled = ids[:]
            random.Random(i).shuffle(shuffled)
            neighbours = sims[i].topk(2).indices.tolist()
            companies = {"alone": [], "fixed": fixed, "shuffled": [comp.compress(tok.decode(shuffled))],
                         "neighbours": [comp.compress(texts[j]) for j in neighbours]}
            full = mem.at(i, 1.0)
            record = {"node": i, "tokens": len(ids), "probes": [tok.decode(c) + " || " + tok.decode(s) for c, s in rows],
                      "neighbours": neighbours, "repeat": {}, "probe": {k: {} for k in companies}}
            ref_repeat = _repeat_probs(comp, full, ids)
            refs = {k: probe_probs(comp, [*c, full], rows) for k, c in companies.items()}
            for r in LADDER:
                cand = mem.at(i, r)
                record["repeat"][f"{r:g}"] = _overlap(ref_repeat, _repeat_probs(comp, cand, ids))
                for k, c in companies.items():
                    got = probe_probs(comp, [*c, cand], rows)
                    record["probe"][k][f"{r:g}"] = [float(torch.minimum(a, b).sum(-1).mean()) for a, b in zip(refs[k], got, strict=True)]
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
