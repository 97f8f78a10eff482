"""kvzip memories read in company: budget policies compared on fixed retrievals (an experiment harness).

The RAG bench's documents and questions for the same options (`load_corpus`: the same sample); each
question's top-k nodes (MiniLM, FAISS flat, as the RAG bench retrieves them) are read best last. Every node is scored once (`kvzip:keep_fraction=1.0` stores
every entry with its score) and each policy keeps a share of those entries per node, so policies
differ only in what they keep. Per question and policy: the greedy answer (contained) and the gold
answer's log-likelihood after raw text's lead-in (`icae_rag.eval.compare`).

    python -m benchmarks.kvzip_company --dataset techdocs-dev --policy full --policy ratio=4 --out OUT

Policies: `full`; `ratio=R` (every node at R); `read=R` (every node whole, the question's reader keeping
1/R of them together, `kvzip:keep_fraction=1.0,read_ratio=R`); `spec=<kvzip spec>` (each node at the ratio that
compressor chose for it, e.g. `spec=kvzip`); `ratios=FILE` (a JSON of node index -> ratio).
Per-node choices and answers are cached in OUT, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from icae_rag import load_compressor
from icae_rag.eval.compare import (
    agreement_logliks,
    answer_logliks,
    answer_targets,
    compare_modes,
    comparison_markdown,
)
from icae_rag.eval.metrics import answer_contained
from icae_rag.memories.kv_memory import KvMemory, entry_owners

FULL = "kvzip:keep_fraction=1.0"


def load_questions(dataset: str, documents: int | None, limit: int | None, seed: int, data_root: str | None
                   ) -> tuple[list[Any], list[dict[str, Any]]]:
    """The RAG bench's documents and questions for the same options (`load_corpus`); None takes them all."""
    from benchmarks.llamaindex_rag import RagBenchOptions, load_corpus

    every = 10**9  # load_corpus takes min(n, available)
    docs, items, _ = load_corpus(RagBenchOptions(dataset=dataset, documents=documents or every, limit=limit or every,
                                                 seed=seed, data_root=data_root))
    return docs, [{"id": it.id, "question": it.question, "answers": list(it.answers)} for it in items]


def retrieve(docs: list[Any], questions: list[dict[str, Any]], tokenizer, node_tokens: int, top_k: int) -> list[str]:
    """The nodes (as the RAG bench cuts them) and, per question, its top-k node indices best last."""
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.postprocessor.icae_rag import build_faiss_index

    splitter = SentenceSplitter(chunk_size=node_tokens, chunk_overlap=0,
                                tokenizer=lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])
    index = build_faiss_index(docs, kind="flat", transformations=[splitter])
    nodes = list(index.docstore.docs.values())
    where = {n.node_id: i for i, n in enumerate(nodes)}
    retriever = index.as_retriever(similarity_top_k=top_k)
    for q in tqdm(questions, desc="retrieval"):
        hits = sorted(retriever.retrieve(q["question"]), key=lambda h: h.score or 0.0)  # best last
        q["nodes"] = [where[h.node.node_id] for h in hits]
    return [n.get_content() for n in nodes]


class Memories:
    """Every node's full memory (scored once, cached in `out`), and per-spec chosen ratios."""

    def __init__(self, texts: list[str], out: Path, batch_size: int = 8) -> None:
        self.texts, self.out, self.batch_size = texts, out, batch_size
        self.full_compressor = load_compressor(FULL)
        (out / "memories").mkdir(parents=True, exist_ok=True)
        self._full: dict[int, KvMemory] = {}

    def _path(self, i: int) -> Path:
        sha = hashlib.sha256(self.texts[i].encode()).hexdigest()[:16]
        return self.out / "memories" / f"{i:04d}-{sha}.safetensors"

    def full(self, wanted: list[int]) -> None:
        """Score the nodes in `wanted` that are not cached yet."""
        todo = [i for i in wanted if i not in self._full and not self._path(i).exists()]
        for lo in tqdm(range(0, len(todo), self.batch_size), desc="scoring nodes (full memories)"):
            part = todo[lo:lo + self.batch_size]
            for i, m in zip(part, self.full_compressor.compress_many([self.texts[i] for i in part]), strict=True):
                m.save(self._path(i))
        for i in wanted:
            if i not in self._full:
                self._full[i] = KvMemory.load(self._path(i))

    def at(self, i: int, ratio: float, floor: float = 0.0) -> KvMemory:
        """Node i's memory keeping 1/ratio of its entries (the highest-scored, over all layers and heads);
        with `floor`, every (layer, head) first keeps its own best `floor` share of the positions."""
        m = self._full[i]
        if ratio <= 1:
            return m
        budget = max(1, round(m.kept_entries / ratio))
        if not floor:
            return m.pruned(budget)
        scores, owners = m.scores.float(), entry_owners(m.counts)
        per_head = int(m.counts.reshape(-1)[0])
        floor_n = max(1, round(per_head * floor))
        # every head's best floor_n: rank within head by score
        order = torch.argsort(owners * 1e4 - scores.clamp(0, 1), stable=True)  # by head, best first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - torch.repeat_interleave(
            torch.cumsum(m.counts.reshape(-1).long(), 0) - m.counts.reshape(-1).long(), m.counts.reshape(-1).long())
        forced = rank < floor_n
        rest = scores.masked_fill(forced, -1.0)
        extra = max(0, budget - int(forced.sum()))
        kept = torch.cat([forced.nonzero().flatten(), rest.topk(extra).indices])
        return m.select(kept.sort().values)

    def chosen(self, spec: str, wanted: list[int]) -> dict[int, float]:
        """The ratio compressor `spec` chose for each node (cached in out/chosen-<spec>.json)."""
        path = self.out / f"chosen-{spec.replace(':', '_').replace('=', '-').replace(',', '_')}.json"
        got = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
        todo = [i for i in wanted if i not in got]
        if todo:
            comp = load_compressor(spec)
            for lo in tqdm(range(0, len(todo), self.batch_size), desc=f"choosing budgets ({spec})"):
                part = todo[lo:lo + self.batch_size]
                for i, m in zip(part, comp.compress_many([self.texts[i] for i in part]), strict=True):
                    got[i] = float(m.metadata.get("kvzip_ratio", m.compression_ratio))
                path.write_text(json.dumps({str(k): v for k, v in sorted(got.items())}))
        return got


def policy_ratios(policy: str, memories: Memories, wanted: list[int]) -> dict[int, float]:
    """Per node, the ratio a policy reads it at."""
    name, _, arg = policy.partition("=")
    if policy == "full":
        return dict.fromkeys(wanted, 1.0)
    if name == "ratio":
        return dict.fromkeys(wanted, float(arg))
    if name == "floor":  # floor=R/F: ratio R, each head keeps at least F of its positions
        return dict.fromkeys(wanted, float(arg.split("/")[0]))
    if name == "read":  # every node stored whole; the question's reader keeps 1/R of them together
        return dict.fromkeys(wanted, 1.0)
    if name == "spec":
        return memories.chosen(arg, wanted)
    if name == "ratios":
        table = {int(k): float(v) for k, v in json.loads(Path(arg).read_text()).items()}
        return {i: table[i] for i in wanted}
    raise SystemExit(f"unknown policy {policy!r}")


_READERS: dict[str, Any] = {}


def reader_for(policy: str, full: Any) -> Any:
    """The compressor a policy answers with: `read=R` reads whole memories at R together, as the
    read budget does (`KvzipConfig.read_ratio`); every other policy reads what it kept, as stored."""
    name, _, arg = policy.partition("=")
    if name != "read":
        return full
    if policy not in _READERS:
        _READERS[policy] = load_compressor(f"kvzip:keep_fraction=1.0,read_ratio={arg}")
    return _READERS[policy]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="techdocs-dev")
    p.add_argument("--documents", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root")
    p.add_argument("--node-tokens", type=int, default=256)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--first", type=int, help="only the first FIRST questions of the sample")
    p.add_argument("--policy", action="append", default=[])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    docs, questions = load_questions(a.dataset, a.documents, a.limit, a.seed, a.data_root)
    questions = questions[:a.first]  # the first of the sample: a stopped RAG bench run's questions
    raw = load_compressor("raw")
    texts = retrieve(docs, questions, raw.decoder.tokenizer, a.node_tokens, a.top_k)
    (a.out / "nodes.json").write_text(json.dumps({"nodes": texts, "questions": questions}))
    (a.out / "setup.json").write_text(json.dumps({k: str(v) for k, v in vars(a).items()} |
                                                 {"nodes": len(texts), "questions": len(questions)}, indent=1))
    wanted = sorted({i for q in questions for i in q["nodes"]})
    memories = Memories(texts, a.out)
    memories.full(wanted)
    reader = memories.full_compressor
    answers_path = a.out / "answers.jsonl"
    done: dict[tuple[str, str], dict] = {}
    if answers_path.exists():
        for line in answers_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["policy"], r["id"])] = r
    gen = {"max_new_tokens": a.max_new_tokens}
    # Raw text first: its answers give every policy's lead-in.
    for q in tqdm([q for q in questions if ("raw", q["id"]) not in done], desc="raw"):
        ctx = [texts[i] for i in q["nodes"]]
        pred = raw.answer(q["question"], ctx, **gen).text
        target = answer_targets(raw, [q["question"]], [ctx], [pred], [q["answers"]])[0]
        r = {"policy": "raw", "id": q["id"], "prediction": pred, "contained": answer_contained(pred, q["answers"]),
             "loglik": answer_logliks(raw, [q["question"]], [ctx], [target])[0], "ratios": [1.0] * len(ctx),
             "target": target}
        done[("raw", q["id"])] = r
        with answers_path.open("a") as f:
            f.write(json.dumps(r) + "\n")
    for policy in a.policy:
        ratios = policy_ratios(policy, memories, wanted)
        for q in tqdm([q for q in questions if (policy, q["id"]) not in done], desc=policy):
            floor = float(policy.split("/")[1]) if policy.startswith("floor=") else 0.0
            ctx = [memories.at(i, ratios[i], floor) for i in q["nodes"]]
            reads = reader_for(policy, reader)
            answer = reads.answer(q["question"], ctx, **gen)
            pred = answer.text
            read = [answer.compression_ratio] if reads is not reader else None
            target = done[("raw", q["id"])]["target"]
            r = {"policy": policy, "id": q["id"], "prediction": pred, "contained": answer_contained(pred, q["answers"]),
                 "loglik": answer_logliks(reads, [q["question"]], [ctx], [target])[0],
                 "ratios": read or [ratios[i] for i in q["nodes"]]}
            reference = pred if policy == "full" else done.get(("full", q["id"]), {}).get("prediction")
            if reference is not None:  # the full memories' own answer, scored from what this policy reads
                r["agreement"] = agreement_logliks(reads, [q["question"]], [ctx], [reference])[0]
            done[(policy, q["id"])] = r
            with answers_path.open("a") as f:
                f.write(json.dumps(r) + "\n")
    report(questions, ["raw", *a.policy], done, a.out, a.seed)
    return 0


def report(questions: list[dict], policies: list[str], done: dict, out: Path, seed: int) -> None:
    """summary.json / summary.md: per policy contained, mean ratio, and paired comparisons with raw and full."""
    scores = {p: [done[(p, q["id"])]["contained"] for q in questions] for p in policies}
    logliks = {p: [done[(p, q["id"])]["loglik"] for q in questions] for p in policies}
    mean_ratio = {p: sum(len(r["ratios"]) for r in (done[(p, q["id"])] for q in questions)) /
                  sum(sum(1 / x for x in done[(p, q["id"])]["ratios"]) for q in questions) for p in policies}
    agreements = {"full": {p: [done[(p, q["id"])].get("agreement") for q in questions]
                           for p in policies}}
    comparisons = compare_modes(scores, ["raw", "full"], logliks, agreements, seed=seed)
    summary = {"n": len(questions), "contained": {p: sum(s) / len(s) for p, s in scores.items()},
               "loglik": {p: sum(x) / len(x) for p, x in logliks.items()}, "read_ratio": mean_ratio,
               "comparisons": comparisons}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = [f"n = {len(questions)}", "", "| policy | contained | gold log-lik | ratio read |", "|---|---:|---:|---:|"]
    md += [f"| {p} | {summary['contained'][p]:.3f} | {summary['loglik'][p]:+.3f} | {mean_ratio[p]:.2f}x |" for p in policies]
    md += ["", comparison_markdown(comparisons)]
    (out / "summary.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
