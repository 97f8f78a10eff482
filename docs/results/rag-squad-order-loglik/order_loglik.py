"""Ran on 31362a5 with kv_attention_context.diff applied (memory-column logit temperature/scale, not kept):
    PYTHONPATH=.:integrations/llama_index OMP_NUM_THREADS=1 python order_loglik.py 30 order_results.json
Gold-answer log-likelihood per token on the RAG bench's SQuAD setting (2 held-out articles, 512-token nodes,
MiniLM top 5), paired against raw: the nodes in retrieval order vs reversed (highest-scored last, next to the
question), memories encoded apart with nothing evicted ("full") or at 4x, and memories laid at parallel
positions (every memory right after the prefix, APE-style). Result: reading order, not encoding apart, was
most of the loss."""
import json
import math
import statistics
import sys
import time
from dataclasses import replace

import torch
from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import build_faiss_index

import icae_rag.decoding.prefill as G  # was icae_rag.generation (removed in 0.2)
from benchmarks.llamaindex_rag import RagBenchOptions, load_corpus
from icae_rag import load_compressor
from icae_rag.decoding import build_prompt
from icae_rag.kv_attention import KvView
from icae_rag.kv_memory import KvMemory

N, out_path = int(sys.argv[1]), sys.argv[2]
STATE = {"P": None, "T_text": None, "temp": 1.0, "logS": 0.0, "parallel": False}


class TunedView(KvView):
    def __post_init__(self):
        super().__post_init__()
        if self.valid is not None and STATE["P"] is not None:
            ctx = []
            for v in self.valid:
                c = torch.zeros_like(v)
                c[..., STATE["P"]: v.shape[2] - STATE["T_text"]] = True
                ctx.append(c)
            self.context = ctx
            self.context_temperature = STATE["temp"]
            self.context_log_scale = STATE["logS"]


G.KvView = TunedView
_orig_extend = G._extend


def _extend(dec, row, seg):
    if STATE["parallel"] and isinstance(seg, KvMemory) and STATE["P"] is not None:
        _, new = _orig_extend(dec, replace(row, position=STATE["P"]), seg)
        return None, replace(new, position=max(row.position, STATE["P"] + seg.source_tokens))
    return _orig_extend(dec, row, seg)


G._extend = _extend
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
def gold_logprob(contexts, question, gold, temp=1.0, scale=1.0, parallel=False):
    prompt = build_prompt(base, contexts, question=question)
    if prompt.has_memories:
        STATE.update(P=prompt.segments[0].shape[0],
                     T_text=sum(s.shape[0] for s in prompt.segments[1:] if not isinstance(s, KvMemory)),
                     temp=temp, logS=math.log(scale), parallel=parallel)
    else:
        STATE["P"] = None
    try:
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
    finally:
        STATE["P"] = None
    return total / len(gold)


MODES = {  # name: (which memories, temperature, scale, parallel, reversed)
    "full T1.0 S1.0": ("full", 1.0, 1.0, False, False),
    "4x": ("four", 1.0, 1.0, False, False),
    "4x T1.15": ("four", 1.15, 1.0, False, False),
    "raw reversed": ("raw", 1.0, 1.0, False, True),
    "full reversed": ("full", 1.0, 1.0, False, True),
    "4x reversed": ("four", 1.0, 1.0, False, True),
    "full parallel": ("full", 1.0, 1.0, True, False),
    "4x parallel": ("four", 1.0, 1.0, True, False),
    "4x parallel reversed": ("four", 1.0, 1.0, True, True),
}
modes = ["raw", *MODES]
scores = {m: [] for m in modes}
start = time.perf_counter()
for i, item in enumerate(items[:N]):
    texts = [n.node.get_content() for n in retriever.retrieve(item.question)]
    full = [memory(t) for t in texts]
    four = [m.pruned(round(m.source_tokens * m.layers * m.kv_heads / 4)) for m in full]
    gold = tok(item.answers[0], add_special_tokens=False)["input_ids"]
    scores["raw"].append(gold_logprob(texts, item.question, gold))
    for name, (which, t, s, par, rev) in MODES.items():
        ctx = {"raw": texts, "full": full, "four": four}[which]
        scores[name].append(gold_logprob(ctx[::-1] if rev else ctx, item.question, gold, t, s, par))
    print(i, {m: round(v[-1], 2) for m, v in scores.items()}, round(time.perf_counter() - start), flush=True)

def summary(m, ref="raw"):
    v = scores[m]
    d = [a - b for a, b in zip(v, scores[ref], strict=True)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    return {"mean": statistics.mean(v), "minus_raw": statistics.mean(d), "se": se}


result = {"record": record, "n": len(scores["raw"]), "modes": {m: summary(m) for m in modes}, "per_question": scores}
json.dump(result, open(out_path, "w"), indent=1)
for m in modes:
    print(m, {k: round(v, 3) for k, v in summary(m).items()})
