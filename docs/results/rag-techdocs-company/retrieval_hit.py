"""Retrieval hit rate of a RAG bench run (same corpus, splitter and index): any gold answer verbatim in the top-k nodes.

    PYTHONPATH=. python docs/results/rag-techdocs-company/retrieval_hit.py docs/results/rag-techdocs-company/results.json
"""
import json
import sys

from llama_index.core.node_parser import SentenceSplitter
from llama_index.postprocessor.icae_rag import build_faiss_index

from benchmarks.llamaindex_rag import RagBenchOptions, load_corpus
from icae_rag import new_compressor
from icae_rag.eval.metrics import answer_contained

res = json.load(open(sys.argv[1]))
rows = {q["id"]: q for q in res["questions"]}
o = res["options"]
opts = RagBenchOptions(**{k: v for k, v in o.items() if k in RagBenchOptions.__dataclass_fields__})
docs, items, _ = load_corpus(opts)
tok = new_compressor("raw", device="cpu").decoder.tokenizer
splitter = SentenceSplitter(chunk_size=opts.node_tokens, chunk_overlap=0, tokenizer=lambda t: tok(t, add_special_tokens=False)["input_ids"])
index = build_faiss_index(docs, kind="flat", transformations=[splitter])
ret = index.as_retriever(similarity_top_k=opts.top_k)
hit = raw_ok = hit_raw = n = 0
for it in items:
    if it.id not in rows:
        continue
    n += 1
    texts = [x.node.get_content() for x in ret.retrieve(it.question)]
    h = any(a in t for a in it.answers for t in texts)
    r = answer_contained(rows[it.id]["predictions"]["raw"], it.answers)
    hit += h
    raw_ok += r
    hit_raw += h and r
print(json.dumps({"n": n, "retrieval_hit": hit, "raw_answered": raw_ok, "raw_answered_given_hit": hit_raw}))
