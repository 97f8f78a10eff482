"""Ran at commit 9ec1028 (read-time recompute, removed after this measurement):
    PYTHONPATH=.:integrations/llama_index OMP_NUM_THREADS=1 python loglik.py 30 results.json
Gold-answer log-likelihood on the RAG bench's SQuAD setting: raw joint text vs memories encoded apart
(nothing evicted / 4x) with and without read-time recomputation. Lower-variance than answer-contained."""
import json
import statistics
import sys
import time

import torch
from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import build_faiss_index

from benchmarks.llamaindex_rag import RagBenchOptions, load_corpus
from icae_rag import load_compressor
from icae_rag.decoding import build_prompt  # was icae_rag.generation (removed in 0.2)
from icae_rag.decoding.prefill import _prefill

N, out_path = int(sys.argv[1]), sys.argv[2]
opts = RagBenchOptions(dataset="squad", limit=100, documents=2, seed=0)
documents, items, record = load_corpus(opts)
base = load_compressor("kvzip:keep_fraction=1.0,lead_tokens=0")
redo = load_compressor("kvzip:keep_fraction=1.0,lead_tokens=0,recompute=0.15")
assert base.version == redo.version
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
def gold_logprob(comp, contexts, question, gold):
    prompt = build_prompt(comp, contexts, question=question)
    with comp.decoding():
        logits, cache, mask, positions, view = _prefill(comp, [prompt])
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

modes = ["raw", "apart, nothing evicted", "apart, nothing evicted, recompute 0.15", "apart 4x", "apart 4x, recompute 0.15"]
scores = {m: [] for m in modes}
start = time.perf_counter()
for i, item in enumerate(items[:N]):
    texts = [n.node.get_content() for n in retriever.retrieve(item.question)]
    full = [memory(t) for t in texts]
    four = [m.pruned(round(m.source_tokens * m.layers * m.kv_heads / 4)) for m in full]
    gold = tok(item.answers[0], add_special_tokens=False)["input_ids"]
    scores["raw"].append(gold_logprob(base, texts, item.question, gold))
    scores["apart, nothing evicted"].append(gold_logprob(base, full, item.question, gold))
    scores["apart, nothing evicted, recompute 0.15"].append(gold_logprob(redo, full, item.question, gold))
    scores["apart 4x"].append(gold_logprob(base, four, item.question, gold))
    scores["apart 4x, recompute 0.15"].append(gold_logprob(redo, four, item.question, gold))
    print(i, {m: round(v[-1], 3) for m, v in scores.items()}, round(time.perf_counter() - start), flush=True)

def summary(m):
    v = scores[m]
    d = [a - b for a, b in zip(v, scores["raw"], strict=True)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    return {"mean_logprob_per_token": statistics.mean(v), "minus_raw": statistics.mean(d), "minus_raw_se": se}
result = {"record": record, "n": N, "gold": "first reference answer, teacher-forced after the answer prompt",
          "modes": {m: summary(m) for m in modes}, "per_question": scores}
json.dump(result, open(out_path, "w"), indent=1)
for m in modes:
    print(m, {k: round(v, 4) for k, v in summary(m).items()})
