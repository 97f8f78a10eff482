"""RAG benchmark: raw-text answers vs answers from precomputed memories, through LlamaIndex.

One FAISS index (flat inner product, MiniLM) over a few long real documents cut into
`node_tokens`-token nodes; per question every mode answers from the same top-k nodes with the same
decoder: `raw` (the nodes' text), each compressor (memories precomputed by `IcaeRagIngestion`
when the index was built, so a query compresses nothing), and LongLLMLingua (the nodes' text pruned
to the first compressor's budget, scored by the same local decoder). Per mode: decoder context
positions, end-to-end seconds per query (retrieval + postprocessing + answer), KV-cache MB,
resident-memory rise, answer-contained / F1 / EM with bootstrap intervals, contained as a share of
raw's with a paired interval (questions resampled together), and every question's answer in every
mode. All in one run.

    python -m benchmarks.llamaindex_rag --dataset covid --limit 40 --out bench-rag

Each answered question is appended to `--out`/progress.jsonl; run the same command again after an
interruption and only the questions left are answered.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core import Document
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode
from llama_index.postprocessor.icae_rag import (
    IcaeRagCompressEndEvent,
    IcaeRagIngestion,
    IcaeRagSynthesizer,
    build_faiss_index,
    build_query_engine,
)
from pydantic import Field
from tqdm.auto import tqdm

from icae_rag.compressors import shipped_kinds
from icae_rag.data import LongDocQA, dataset_names, get_dataset
from icae_rag.errors import IcaeRagError, InvalidInputError
from icae_rag.eval.compare import (
    agreement_logliks,
    answer_logliks,
    answer_targets,
    compare_modes,
    comparison_markdown,
)
from icae_rag.eval.efficiency import kv_bytes_per_position
from icae_rag.eval.metrics import answer_contained, bootstrap_ci
from icae_rag.eval.qa import QAItem, contained_vs, ratio_cell, score_predictions
from icae_rag.eval.record import PeakRss, environment, write_report
from icae_rag.io import atomic_path
from icae_rag.stores import SqliteMemoryStore

PROGRESS_FILE = "progress.jsonl"  # in --out: the questions answered so far, so a stopped run resumes


@dataclass
class RagBenchOptions:
    """What to run: `documents` long documents (seeded), up to `limit` questions asked over them."""

    dataset: str = "squad"
    limit: int = 40
    documents: int = 3
    compressors: list[str] = field(default_factory=shipped_kinds)
    top_k: int = 5
    node_tokens: int = 512
    max_new_tokens: int = 32
    seed: int = 0
    data_root: str | None = None
    out: str = "bench-rag"
    longllmlingua: bool = True
    device: str = "auto"
    best_last: bool = True  # every mode reads the highest-scored node last, next to the question
    # Every mode is compared question by question with these (those present): retention, flips, gold log-likelihood.
    references: list[str] = field(default_factory=lambda: ["raw", "kvzip:keep_fraction=1.0"])


class EventCollector(BaseEventHandler):
    """Keeps the instrumentation events of one class while installed on the root dispatcher."""

    kind: type
    events: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventCollector"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, self.kind):
            self.events.append(event)

    def __enter__(self) -> EventCollector:
        get_dispatcher().add_event_handler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        get_dispatcher().event_handlers.remove(self)


def load_corpus(opts: RagBenchOptions) -> tuple[list[Document], list[QAItem], dict[str, Any]]:
    """Seeded documents and questions over them; SQuAD uses only the 13 held-out articles."""
    if opts.dataset not in dataset_names(use="rag"):
        raise InvalidInputError(f"unknown dataset {opts.dataset!r}: choose one of {dataset_names(use='rag')}")
    if opts.limit <= 0 or opts.documents <= 0:
        raise InvalidInputError("--limit and --documents must be positive")
    rng = random.Random(opts.seed)
    dataset = get_dataset(opts.dataset)
    by_doc: dict[str, list] = defaultdict(list)
    for ex in dataset.load(opts.data_root):
        by_doc[ex.doc_id if isinstance(ex, LongDocQA) else ex.title].append(ex)
    # A long-document set's question carries its whole document; a paragraph set's article is its
    # paragraphs joined.
    texts = {d: exs[0].document if isinstance(exs[0], LongDocQA) else "\n\n".join(dict.fromkeys(ex.context for ex in exs))
             for d, exs in by_doc.items()}
    split = f"{dataset.description}, " + ("whole documents" if dataset.records == "longqa" else "each article one document")
    chosen = rng.sample(sorted(by_doc), min(opts.documents, len(by_doc)))
    questions = [ex for d in chosen for ex in by_doc[d]]
    questions = rng.sample(questions, min(opts.limit, len(questions)))
    items = [QAItem(ex.id, ex.question, ex.answers) for ex in questions]
    docs = [Document(text=texts[d], id_=f"{opts.dataset}:{d}") for d in chosen]
    record = {"dataset": opts.dataset, "split": split, "documents": chosen, "n": len(items), "seed": opts.seed}
    return docs, items, record


def run_rag_bench(documents: list[Document], items: list[QAItem], compressors: list[Any], raw: Any,
                  opts: RagBenchOptions, *, lingua: Any = None, progress_file: Path | None = None) -> dict[str, Any]:
    """Build the index once, precompute memories, then answer every item in every mode.

    With `progress_file`, each answered question is appended to it, and a run restarted with the same
    options, items and modes answers only the questions not in it yet (the index and memories are
    rebuilt: they are deterministic)."""
    if not items or len({it.id for it in items}) != len(items):
        raise InvalidInputError("pass at least one question, each with its own id")
    tokenizer = raw.decoder.tokenizer
    splitter = SentenceSplitter(chunk_size=opts.node_tokens, chunk_overlap=0,
                                tokenizer=lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])
    start = time.perf_counter()
    index = build_faiss_index(documents, kind="flat", transformations=[splitter])
    nodes = list(index.docstore.docs.values())
    index_seconds = time.perf_counter() - start
    generation = {"max_new_tokens": opts.max_new_tokens}
    common = {"similarity_top_k": opts.top_k, "generation": generation, "best_last": opts.best_last, "streaming": True}
    engines: dict[str, Any] = {"raw": build_query_engine(index, raw, None, **common)}
    readers: dict[str, Any] = {"raw": raw}
    # What each mode's decoder reads for the retrieved nodes, to score the gold answer from it.
    reads: dict[str, Any] = {"raw": IcaeRagSynthesizer(raw, None, best_last=opts.best_last)}
    ingest: dict[str, dict[str, float]] = {}
    key = {"options": {k: v for k, v in asdict(opts).items() if k != "out"}, "items": [it.id for it in items],
           "modes": ["raw", *(c.version for c in compressors)]}
    done = _open_progress(progress_file, key) if progress_file is not None else {}
    with tempfile.TemporaryDirectory(prefix="icae-rag-bench-") as tmp:
        for comp in compressors:
            store = SqliteMemoryStore(Path(tmp) / f"store-{len(engines)}")
            start = time.perf_counter()
            IcaeRagIngestion(comp, store)(nodes, show_progress=True)
            ingest[comp.label] = {"seconds": time.perf_counter() - start, "nodes": len(nodes)}
            engines[comp.label] = build_query_engine(index, comp, store, **common)
            readers[comp.label] = comp
            reads[comp.label] = IcaeRagSynthesizer(comp, store, best_last=opts.best_last)
        retriever = index.as_retriever(similarity_top_k=opts.top_k)
        budget_mode = compressors[0].label if compressors else None
        todo = [it for it in items if it.id not in done]
        # The first question twice: a warm-up, not scored.
        for i, item in enumerate(tqdm(todo[:1] + todo, desc="questions (every mode)", unit="question")):
            runs = {name: _query(engine, readers[name], item.question) for name, engine in engines.items()}
            if lingua is not None and budget_mode is not None:
                runs["longllmlingua"] = _lingua_query(lingua, retriever, raw, item.question,
                                                      runs[budget_mode]["positions"], opts.max_new_tokens)
            if i == 0:
                continue
            _score_gold(item, runs, readers, reads, opts.references)
            for run in runs.values():
                # Seconds per query include decoding, so a shorter answer is faster: say how long each was.
                run["answer_tokens"] = len(tokenizer(run["prediction"], add_special_tokens=False)["input_ids"])
                run["same_nodes_as_raw"] = run["node_ids"] == runs["raw"]["node_ids"]
            done[item.id] = runs
            if progress_file is not None:
                with progress_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"id": item.id, "runs": runs}) + "\n")
    rows = {name: [done[it.id][name] for it in items] for name in done[items[0].id]}
    kv = kv_bytes_per_position(raw) / 2**20
    results = {name: _summarise(name, r, items, kv, opts.seed, ingest.get(name)) for name, r in rows.items()}
    predictions = {name: [run["prediction"] for run in runs] for name, runs in rows.items()}
    # Compared on the answerable questions: an unanswerable one has no gold to contain or score.
    scores = {name: [answer_contained(p, it.answers) for p, it in zip(answers, items, strict=True) if it.answers]
              for name, answers in predictions.items()}
    logliks = {name: [run["loglik"] for run in runs if "loglik" in run] for name, runs in rows.items()
               if any("loglik" in run for run in runs)}
    agreements = {ref: {name: [run.get("agreement", {}).get(ref) for run in runs] for name, runs in rows.items()}
                  for ref in opts.references}
    comparisons = compare_modes(scores, opts.references, logliks, agreements, seed=opts.seed) if scores["raw"] else {}
    for name, values in logliks.items():
        results[name]["gold_loglik"] = dict(zip(("mean", "low", "high"), bootstrap_ci(values, seed=opts.seed), strict=True))
    for name, r in results.items():
        r["position_reduction_vs_raw"] = results["raw"]["mean_context_positions"] / max(1e-9, r["mean_context_positions"])
        r["speedup_vs_raw"] = results["raw"]["mean_seconds"] / r["mean_seconds"]
        r["ttft_speedup_vs_raw"] = results["raw"]["mean_ttft_seconds"] / r["mean_ttft_seconds"]
        # Paired: every mode answered the same questions from the same nodes.
        vs_raw = None if name == "raw" else contained_vs(predictions[name], predictions["raw"], items, opts.seed)
        if vs_raw is not None:
            r["contained_vs_raw"] = vs_raw
    questions = [{"id": it.id, "question": it.question, "answers": list(it.answers),
                  "predictions": {name: answers[i] for name, answers in predictions.items()},
                  # Each mode's gold log-likelihood and raw's lead-in, so subsets can be compared afterwards.
                  "gold_logliks": {name: runs[i]["loglik"] for name, runs in rows.items() if "loglik" in runs[i]},
                  "agreements": {name: runs[i]["agreement"] for name, runs in rows.items() if "agreement" in runs[i]},
                  "gold_target": rows["raw"][i].get("gold_target")} for i, it in enumerate(items)]
    return {"nodes": len(nodes), "index_seconds": index_seconds, "modes": results, "comparisons": comparisons,
            "questions": questions}


def _open_progress(path: Path, key: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The answered questions recorded in `path` (started afresh with `key` if it is missing). A torn
    last line (the run stopped mid-write) is dropped; a file from other options raises."""
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"key": key}) + "\n", encoding="utf-8")
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if json.loads(lines[0])["key"] != key:
            raise InvalidInputError(f"{path} records a run with other options, questions or compressors: "
                                    "delete it to start over, or pass the options of that run to resume it")
    except (IndexError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{path} is not a RAG bench progress file ({e}): delete it to start over") from e
    done, kept = {}, [lines[0]]
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break
        done[entry["id"]] = entry["runs"]
        kept.append(line)
    if len(kept) < len(lines):  # rewrite without the torn line so later appends start on a clean line
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return done


def _query(engine: Any, reader: Any, question: str) -> dict[str, Any]:
    """One streamed query: time to the first answer token (retrieval, postprocessing, prefill) and to the end."""
    with EventCollector(kind=IcaeRagCompressEndEvent) as seen, PeakRss() as mem:
        start = time.perf_counter()
        response = engine.query(question)
        pieces, ttft = [], None
        for piece in response.response_gen:
            ttft = ttft if ttft is not None else time.perf_counter() - start
            pieces.append(piece)
        seconds = time.perf_counter() - start
    event = seen.events[-1]
    return {"prediction": "".join(pieces).strip(), "seconds": seconds, "ttft_seconds": ttft if ttft is not None else seconds,
            "nodes": response.source_nodes,  # what was read; dropped once the gold is scored
            "positions": _read_positions(reader, event),
            "source_tokens": event.source_tokens, "compressed_at_query": event.compressed,
            "node_ids": [n.node.node_id for n in response.source_nodes], "rss_mb": mem.peak_mb}


def _score_gold(item: QAItem, runs: dict[str, dict[str, Any]], readers: dict[str, Any], reads: dict[str, Any],
                references: list[str]) -> None:
    """Each engine mode's gold log-likelihood (`icae_rag.eval.compare`) from the nodes it read, after the
    lead-in raw text's answer gave the gold, and its agreement with each reference mode's answer; the
    nodes are dropped from the runs."""
    contexts = {name: reads[name].contexts(run.pop("nodes")) for name, run in runs.items() if "nodes" in run}
    for name, ctx in contexts.items():
        runs[name]["agreement"] = {ref: agreement_logliks(readers[name], [item.question], [ctx], [runs[ref]["prediction"]])[0]
                                   for ref in references if ref in runs}
    if not item.answers:
        return
    raw = runs["raw"]
    target = answer_targets(readers["raw"], [item.question], [contexts["raw"]], [raw["prediction"]], [item.answers])[0]
    raw["gold_target"] = list(target)
    for name, ctx in contexts.items():
        runs[name]["loglik"] = answer_logliks(readers[name], [item.question], [ctx], [target])[0]


def _read_positions(reader: Any, event: Any) -> int:
    """Context positions the decoder reads: what the postprocessor reports, except that kvzip
    memories read at a budget (`read_ratio`) are read at it."""
    read = getattr(getattr(reader, "config", None), "read_at", None)
    if read is None:
        return event.context_positions
    return min(event.context_positions, math.ceil(event.source_tokens / read))


def _lingua_query(lingua: Any, retriever: Any, raw: Any, question: str, budget: int, max_new_tokens: int) -> dict[str, Any]:
    with PeakRss() as mem:
        start = time.perf_counter()
        nodes = retriever.retrieve(question)
        texts = [n.node.get_content(MetadataMode.LLM) for n in nodes]
        text, _ = lingua.compress(texts, question, max(1, budget))
        answer = raw.answer(question, [text] if text.strip() else [], max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - start
    ttft = seconds - (answer.seconds - answer.prefill_seconds)
    source = sum(len(raw.tokenize(t)) for t in texts)
    return {"prediction": answer.text, "seconds": seconds, "ttft_seconds": ttft, "positions": answer.context_positions, "source_tokens": source,
            "compressed_at_query": len(texts), "node_ids": [n.node.node_id for n in nodes], "rss_mb": mem.peak_mb}


def _summarise(name: str, rows: list[dict[str, Any]], items: list[QAItem], kv_mb: float, seed: int,
               ingest: dict[str, float] | None) -> dict[str, Any]:
    seconds = [r["seconds"] for r in rows]
    positions = [r["positions"] for r in rows]
    out = score_predictions([r["prediction"] for r in rows], items, seed) | {
        "mean_context_positions": statistics.fmean(positions),
        "compression_ratio": sum(r["source_tokens"] for r in rows) / max(1, sum(positions)),
        "mean_seconds": statistics.fmean(seconds), "median_seconds": statistics.median(seconds),
        "mean_ttft_seconds": statistics.fmean(r["ttft_seconds"] for r in rows),
        "mean_answer_tokens": statistics.fmean(r["answer_tokens"] for r in rows),
        "mean_kv_cache_mb": statistics.fmean(positions) * kv_mb,
        "mean_rss_rise_mb": statistics.fmean(r["rss_mb"] for r in rows),
        "compressed_at_query": sum(r["compressed_at_query"] for r in rows),
        "same_nodes_as_raw": sum(r["same_nodes_as_raw"] for r in rows) / len(rows),
        "examples": [{"question": it.question, "answers": list(it.answers), "prediction": r["prediction"]}
                     for it, r in list(zip(items, rows, strict=True))[:3]],
    }
    if ingest is not None:
        out["index_time_compression"] = ingest
    return out


def rag_markdown(record: dict[str, Any], result: dict[str, Any], opts: RagBenchOptions) -> str:
    """One table: positions, reduction, seconds, speed-up, KV MB and quality per mode."""
    lines = [f"**{record['dataset']}**: {record['split']}; documents {record['documents']}; "
             f"{result['nodes']} nodes of <= {opts.node_tokens} tokens; top_k {opts.top_k}, read "
             f"{'highest-scored last' if opts.best_last else 'in retrieval order'}; n = {record['n']} "
             f"questions, seed {record['seed']}", "",
             "| mode | context positions | fewer positions vs raw | TTFT s | TTFT speed-up vs raw | s / query | "
             "speed-up vs raw | answer tokens | KV MB | contained (95% CI) | contained / raw (paired 95% CI) | F1 | EM | "
             "compressed at query | index-time compression s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for mode, r in result["modes"].items():
        c = r.get("contained")
        contained = f"{c['mean']:.3f} ({c['ci95'][0]:.3f}-{c['ci95'][1]:.3f})" if c else "-"
        f1 = f"{r['f1']['mean']:.3f}" if "f1" in r else "-"
        em = f"{r['exact_match']['mean']:.3f}" if "exact_match" in r else "-"
        ingest = f"{r['index_time_compression']['seconds']:.1f}" if "index_time_compression" in r else "-"
        vs_raw = ratio_cell(r.get("contained_vs_raw"))
        lines.append(f"| {mode} | {r['mean_context_positions']:.0f} | {r['position_reduction_vs_raw']:.1f}x | "
                     f"{r['mean_ttft_seconds']:.2f} | {r['ttft_speedup_vs_raw']:.2f}x | {r['mean_seconds']:.2f} | {r['speedup_vs_raw']:.2f}x | {r['mean_answer_tokens']:.1f} | "
                     f"{r['mean_kv_cache_mb']:.1f} | "
                     f"{contained} | {vs_raw} | {f1} | {em} | {r['compressed_at_query']} | {ingest} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: load data (checked before any model), models, run, write results.json / results.md."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.llamaindex_rag", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=dataset_names(use="rag"), default="squad")
    p.add_argument("--limit", type=int, default=40, help="questions")
    p.add_argument("--documents", type=int, default=3, help="long documents indexed (questions come from them)")
    p.add_argument("--compressor", action="append", dest="compressors",
                   help="kind or checkpoint dir (repeatable; default: the kinds that ship a checkpoint)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--node-tokens", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="the shared data folder (default: $ICAE_RAG_DATA or ../shared/data)")
    p.add_argument("--no-longllmlingua", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--given-order", action="store_true",
                   help="read the nodes in retrieval order (best first) instead of the highest-scored last")
    p.add_argument("--reference", action="append", dest="references",
                   help="compare every mode with this one, question by question (repeatable; default: raw and "
                        "kvzip:keep_fraction=1.0, those present)")
    p.add_argument("--out", default="bench-rag")
    a = p.parse_args(argv)
    opts = RagBenchOptions(dataset=a.dataset, limit=a.limit, documents=a.documents,
                           compressors=a.compressors or shipped_kinds(), top_k=a.top_k, node_tokens=a.node_tokens,
                           max_new_tokens=a.max_new_tokens, seed=a.seed, data_root=a.data_root, out=a.out,
                           longllmlingua=not a.no_longllmlingua, device=a.device, best_last=not a.given_order,
                           **({"references": a.references} if a.references else {}))
    try:
        documents, items, record = load_corpus(opts)
        from icae_rag import load_compressor, new_compressor

        compressors = [load_compressor(spec, device=opts.device) for spec in opts.compressors]
        raw = new_compressor("raw", device=opts.device, decoder=compressors[0].decoder.name if compressors else None)
        lingua = None
        if opts.longllmlingua:
            from icae_rag.eval.longllmlingua import LongLLMLinguaBaseline
            from icae_rag.models.backbones import decoder_source

            lingua = LongLLMLinguaBaseline(decoder_source(raw.decoder.name)[0], device=str(raw.decoder.device))
        env = environment(opts.seed)  # before the run: the commit is the code that ran, not HEAD at the end
        started = time.perf_counter()
        progress = Path(opts.out) / PROGRESS_FILE
        result = run_rag_bench(documents, items, compressors, raw, opts, lingua=lingua, progress_file=progress)
    except IcaeRagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {"suite": "llamaindex-rag", "options": asdict(opts), "environment": env,
               "record": record, "compressors": [{"spec": s, "kind": c.kind, "version": c.version, "trained": c.trained}
                                                 for s, c in zip(opts.compressors, compressors, strict=True)],
               "seconds": time.perf_counter() - started, **result}
    md = ["# icae-rag LlamaIndex RAG benchmark", "", f"commit `{env['git_commit']}`, {env['hardware']['processor']} "
          f"({env['hardware']['cpu_count']} cores), torch {env['versions']['torch']}", "",
          rag_markdown(record, result, opts), "", comparison_markdown(result["comparisons"])]
    write_report(Path(opts.out), results, "\n".join(md))
    progress.unlink()  # the report holds every answer now; a new run with this --out starts afresh
    print(json.dumps({m: {k: r[k] for k in ("mean_context_positions", "mean_ttft_seconds", "ttft_speedup_vs_raw", "contained")}
                      for m, r in result["modes"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
