"""Ran at commit 519a6d7 on one torch thread, beside a RAG benchmark run on the other core:
    PYTHONPATH=.:integrations/llama_index OMP_NUM_THREADS=1 ICAE_RAG_DATA=../shared/data \
        python docs/results/rag-squad-query-aware-loglik/qaware_loglik.py 30 results.json
A first one-question run also had "query" alone (no kvzip score) from 2x and from full memories: -2.1 and -2.9
nats per token against raw on that question (4x per node: +0.01), so those modes were dropped.
Check of the entry <-> cache column mapping in query_scores: no mapped entry reads a padding column (no zero
scores), and the same entries score alike laid out from 2x and from full memories (Spearman 0.995).

Query-aware selection at read time, gold-answer log-likelihood on the SQuAD RAG setting (nodes best last).
Memories are stored larger than read (2x or full); at question time the question's text is prefilled over them
once, recording the largest attention each entry gets from the text after the prefix; the entries are then
pruned to one 4x budget over the five nodes by that score, and the answer is read from the pruned memories.
"""
import json
import statistics
import sys
import time

import torch
from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import build_faiss_index

import icae_rag.decoding.prefill as G  # was icae_rag.generation (removed in 0.2)
from benchmarks.llamaindex_rag import RagBenchOptions, load_corpus
from icae_rag import load_compressor
from icae_rag.decoding import build_prompt
from icae_rag.kv_attention import KvView
from icae_rag.kv_memory import entry_owners, prune_jointly

N, out_path = int(sys.argv[1]), sys.argv[2]
START = int(sys.argv[3]) if len(sys.argv) > 3 else 0


class RecordingView(KvView):
    last = None
    on = False

    def __post_init__(self):
        super().__post_init__()
        if self.query_positions is not None and RecordingView.on:
            self.record = True
            RecordingView.last = self


G.KvView = RecordingView
opts = RagBenchOptions(dataset="squad", limit=100, documents=2, seed=0)
documents, items, record = load_corpus(opts)
base = load_compressor("kvzip:keep_fraction=1.0,lead_tokens=0")
dec, tok = base.decoder, base.decoder.tokenizer
splitter = SentenceSplitter(chunk_size=512, chunk_overlap=0, tokenizer=lambda t: tok(t, add_special_tokens=False)["input_ids"])
index = build_faiss_index(documents, kind="flat", transformations=[splitter])
retriever = index.as_retriever(similarity_top_k=5)
memo = {}


def memory(text):
    if text not in memo:
        memo[text] = base.compress(text)
    return memo[text]


@torch.no_grad()
def query_scores(memories, question):
    """Per memory, (entries,) the largest attention each entry got from the prompt's text after the prefix."""
    prompt = build_prompt(base, memories, question=question)
    RecordingView.on = True
    try:
        with base.decoding():
            G._prefill(base, [prompt])
    finally:
        RecordingView.on = False
    view = RecordingView.last
    start = [prompt.segments[0].shape[0]] * memories[0].layers
    out = []
    for m in memories:
        flat = m.counts.reshape(-1).long()
        owner = entry_owners(m.counts)
        rank = torch.arange(m.kept_entries) - (flat.cumsum(0) - flat)[owner]
        layer, head = owner // m.kv_heads, owner % m.kv_heads
        s = torch.empty(m.kept_entries)
        for li in range(m.layers):
            sel = layer == li
            s[sel] = view.scores[li][0].float().cpu()[head[sel], start[li] + rank[sel]]
            start[li] += int(m.counts[li].max())
        out.append(s)
    return out


def select_by(memories, scores, entries):
    flat = torch.cat(scores)
    chosen = flat.topk(entries).indices.sort().values
    bounds = [0, *torch.tensor([m.kept_entries for m in memories]).cumsum(0).tolist()]
    return [m.select(chosen[(chosen >= lo) & (chosen < hi)] - lo) for m, lo, hi in zip(memories, bounds, bounds[1:], strict=False)]


@torch.no_grad()
def gold_logprob(contexts, question, gold):
    prompt = build_prompt(base, contexts, question=question)
    with base.decoding():
        logits, cache, mask, positions, view = G._prefill(base, [prompt])
        extra = {} if view is None else {"kv_view": view}
        total = 0.0
        for t in gold:
            total += float(torch.log_softmax(logits.float(), -1)[0, t])
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            o = dec.model(inputs_embeds=dec.embed_ids(torch.tensor([[t]], device=dec.device)), attention_mask=mask,
                          position_ids=positions, past_key_values=cache, use_cache=True, **extra)
            logits, cache, positions = o.logits[:, -1], o.past_key_values, positions + 1
    return total / len(gold)


modes = ["raw", "full", "4x node", "4x joint from 2x (kvzip)", "4x joint from 2x (max query, kvzip)",
         "4x node from 2x (max query, kvzip)"]
scores = {m: [] for m in modes}
kept_share = {m: [] for m in modes[2:]}
start = time.perf_counter()
for i, item in enumerate(items[START:START + N]):
    nodes = retriever.retrieve(item.question)
    texts = [n.node.get_content() for n in nodes][::-1]  # best last, as the bench reads them
    full = [memory(t) for t in texts]
    total = sum(m.source_tokens * m.layers * m.kv_heads for m in full)
    budget = round(total / 4)
    two = [m.pruned(round(m.source_tokens * m.layers * m.kv_heads / 2)) for m in full]
    q_two = query_scores(two, item.question)
    mixed = [torch.maximum(q, m.scores.float()) for q, m in zip(q_two, two, strict=True)]
    ctx = {
        "raw": texts, "full": full,
        "4x node": [m.pruned(round(m.source_tokens * m.layers * m.kv_heads / 4)) for m in full],
        "4x joint from 2x (kvzip)": prune_jointly(two, budget),
        "4x joint from 2x (max query, kvzip)": select_by(two, mixed, budget),
        "4x node from 2x (max query, kvzip)": [select_by([m], [s], round(m.source_tokens * m.layers * m.kv_heads / 4))[0]
                                               for m, s in zip(two, mixed, strict=True)],
    }
    gold = tok(item.answers[0], add_special_tokens=False)["input_ids"]
    for m in modes:
        scores[m].append(gold_logprob(ctx[m], item.question, gold))
        if m in kept_share:
            kept_share[m].append([round(x.kept_entries / budget, 3) for x in ctx[m]])
    print(START + i, {m: round(v[-1], 2) for m, v in scores.items()}, kept_share["4x joint from 2x (max query, kvzip)"][-1],
          round(time.perf_counter() - start), flush=True)


def summary(m, ref="raw"):
    d = [a - b for a, b in zip(scores[m], scores[ref], strict=True)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    return {"mean": statistics.mean(scores[m]), "minus_raw": statistics.mean(d), "se": se}


result = {"record": record, "start": START, "n": len(scores["raw"]), "modes": {m: summary(m) for m in modes},
          "per_question": scores, "kept_share_of_budget": kept_share}
json.dump(result, open(out_path, "w"), indent=1)
for m in modes:
    print(m, {k: round(v, 3) for k, v in summary(m).items()})
