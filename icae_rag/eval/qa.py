"""QA suite: answer quality from raw text, compressed context, no context, and LongLLMLingua.

Requirements: questions with reference answers; a paragraph (`context`) or a long document that is
cut into passages and searched with FAISS (top-k by MiniLM inner product over normalised vectors).
Metrics: answer-contained accuracy, token F1 and exact match with bootstrap intervals on answerable
questions; the abstention rate on unanswerable ones (scored separately).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..compressors.base import Compressor
from ..data.chunking import sentence_chunks
from ..data.retrieval import search
from ..errors import DataError
from .compare import (
    agreement_logliks,
    answer_logliks,
    answer_targets,
    compare_modes,
    comparison_markdown,
)
from .metrics import (
    answer_contained,
    bootstrap_ci,
    exact_match,
    has_repeated_ngram,
    is_abstention,
    paired_ratio_ci,
    token_f1,
)


@dataclass
class QAItem:
    """A question, its references (empty = unanswerable) and the passages the reader sees."""

    id: str
    question: str
    answers: tuple[str, ...]
    passages: list[str] = field(default_factory=list)


def load_items(dataset: str, data: str | None, limit: int, seed: int, root: Path | None) -> tuple[list[QAItem], dict]:
    """Sample `limit` questions (seeded) from a `bench-qa` data set or a user's QA JSONL; no model needed."""
    from ..data.readers import LongDocQA, load_jsonl_qa
    from ..data.registry import dataset_names, get_dataset

    if data is not None:
        examples, split = load_jsonl_qa(Path(data)), f"user file {data}"
    elif dataset in dataset_names(use="bench-qa"):
        examples, split = get_dataset(dataset).load(root), get_dataset(dataset).description
    else:
        raise DataError(f"unknown QA dataset {dataset!r}: use one of {dataset_names(use='bench-qa')} "
                        "or --data FILE.jsonl")
    rng = random.Random(seed)
    picked = rng.sample(examples, min(limit, len(examples)))
    # A long-document question's passages are its whole document, cut and searched by `retrieve`.
    items = [QAItem(e.id, e.question, e.answers, [e.document if isinstance(e, LongDocQA) else e.context])
             for e in picked]
    return items, {"dataset": dataset if data is None else "custom", "split": split, "n": len(items), "seed": seed}


def retrieve(items: list[QAItem], encoder, tokenizer, passage_tokens: int, top_k: int) -> None:
    """Replace each item's document by its top-k passages (FAISS inner product, normalised MiniLM)."""
    for item in items:
        doc = item.passages[0]
        enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        chunks = sentence_chunks(offsets, doc, passage_tokens)
        passages = [doc[offsets[s][0] : offsets[e - 1][1]] for s, e in chunks]
        item.passages = [passages[i] for i, _ in search(encoder, passages, item.question, top_k)]


def score_predictions(predictions: list[str], items: list[QAItem], seed: int) -> dict[str, Any]:
    """Contained / F1 / EM with 95% bootstrap intervals on answerable items; abstention rate on the rest;
    the share of all answers with a repeated 4-gram of words (loops)."""
    answerable = [(p, it) for p, it in zip(predictions, items, strict=True) if it.answers]
    unanswerable = [p for p, it in zip(predictions, items, strict=True) if not it.answers]
    out: dict[str, Any] = {"n_answerable": len(answerable), "n_unanswerable": len(unanswerable)}
    for name, fn in (("contained", answer_contained), ("f1", token_f1), ("exact_match", exact_match)):
        values = [fn(p, it.answers) for p, it in answerable]
        if values:
            mean, low, high = bootstrap_ci(values, seed=seed)
            out[name] = {"mean": mean, "ci95": [low, high]}
    if unanswerable:
        mean, low, high = bootstrap_ci([float(is_abstention(p)) for p in unanswerable], seed=seed)
        out["abstention"] = {"mean": mean, "ci95": [low, high]}
    if predictions:  # every answer, answerable or not: a loop is a fault either way
        mean, low, high = bootstrap_ci([float(has_repeated_ngram(p, 4)) for p in predictions], seed=seed)
        out["repeated_4gram"] = {"mean": mean, "ci95": [low, high]}
    return out


def contained_vs(predictions: list[str], reference: list[str], items: list[QAItem], seed: int) -> dict[str, Any] | None:
    """Answer-contained of `predictions` as a share of `reference`'s on the same answerable items, with a
    paired 95% bootstrap interval; None when the reference contains no answer (no ratio to give)."""
    pairs = [(answer_contained(p, it.answers), answer_contained(r, it.answers))
             for p, r, it in zip(predictions, reference, items, strict=True) if it.answers]
    if not any(r for _, r in pairs):
        return None
    ratio, low, high = paired_ratio_ci([p for p, _ in pairs], [r for _, r in pairs], seed=seed)
    return {"ratio": ratio, "ci95": [low, high]}


REFERENCES = ("raw", "kvzip:keep_fraction=1.0")  # every mode is compared with these, those present


def run_qa(items: list[QAItem], modes: dict[str, Callable[[QAItem], list]], reader: dict[str, Compressor],
           *, max_new_tokens: int, batch_size: int, seed: int,
           no_repeat_ngram_size: int | None = None, references: tuple[str, ...] = REFERENCES) -> dict[str, Any]:
    """Answer every item in every mode; `modes[name](item)` gives the contexts, `reader[name]` answers.

    `no_repeat_ngram_size` None keeps the generation default (the loop stop); 0 turns it off.

    A mode's compression ratio is the tokens of the item's passages per decoder position its context
    took, so text compressors (LongLLMLingua) and memories are measured against the same source.
    With a "raw" mode, every mode also gets the gold answers' log-likelihood, scored after the lead-in
    raw text's answer gave them (`icae_rag.eval.compare`), and each mode's `compared` holds retention,
    flips, the log-likelihood difference and the agreement with the reference's own answers against
    every reference present, paired. References answer first, so every later mode's agreement with
    them is scored from its own contexts.
    """
    results: dict[str, Any] = {}
    answered: dict[str, list[str]] = {}
    tokenize = next(iter(reader.values())).tokenize
    source = sum(len(tokenize(p)) for it in items for p in it.passages)
    gold = [i for i, it in enumerate(items) if it.answers]  # the questions a gold answer is scored for
    targets: list[tuple[str, str]] | None = None
    logliks: dict[str, list[float]] = {}
    agreements: dict[str, dict[str, list[float | None]]] = {}
    # raw first (its answers place every mode's gold), then the other references
    order = sorted(modes, key=lambda n: (n != "raw", n not in references))
    for name in order:
        comp = reader[name]
        start = time.perf_counter()
        contexts = [modes[name](it) for it in tqdm(items, desc=f"qa {name}: contexts", leave=False)]
        prepare = time.perf_counter() - start
        predictions, soft, answer_seconds = [], 0, 0.0
        generation = {"max_new_tokens": max_new_tokens}
        if no_repeat_ngram_size is not None:
            generation["no_repeat_ngram_size"] = no_repeat_ngram_size
        for b in tqdm(range(0, len(items), batch_size), desc=f"qa {name}: answers", unit="batch", leave=False):
            batch = items[b : b + batch_size]
            answers = comp.answer_many([it.question for it in batch], contexts[b : b + batch_size], **generation)
            answer_seconds += answers[0].seconds
            predictions += [a.text for a in answers]
            soft += sum(a.context_positions for a in answers)
        results[name] = score_predictions(predictions, items, seed) | {
            "mean_context_positions": soft / max(1, len(items)),
            "compression_ratio": source / soft if soft else None,
            "prepare_seconds_per_question": prepare / max(1, len(items)),
            "answer_seconds_per_question": answer_seconds / max(1, len(items)),
            "examples": [{"question": it.question, "answers": list(it.answers), "prediction": p}
                         for it, p in list(zip(items, predictions, strict=True))[:3]],
            "predictions": predictions,
        }
        answered[name] = predictions
        questions_all = [it.question for it in items]
        for ref in references:
            if ref in answered:
                agreements.setdefault(ref, {})[name] = agreement_logliks(comp, questions_all, contexts, answered[ref],
                                                                          batch_size=batch_size)
        if "raw" in modes and gold:
            questions, ctx = [items[i].question for i in gold], [contexts[i] for i in gold]
            if targets is None:
                targets = answer_targets(comp, questions, ctx, [predictions[i] for i in gold],
                                         [items[i].answers for i in gold])
            logliks[name] = answer_logliks(comp, questions, ctx, targets, batch_size=batch_size)
            mean, low, high = bootstrap_ci(logliks[name], seed=seed)
            results[name]["gold_loglik"] = {"mean": mean, "ci95": [low, high]}
    results = {name: results[name] for name in modes}  # in the caller's order
    if "raw" in answered:  # every mode answered the same items: compare each with raw text, paired
        for name in results.keys() - {"raw"}:
            vs_raw = contained_vs(answered[name], answered["raw"], items, seed)
            if vs_raw is not None:
                results[name]["contained_vs_raw"] = vs_raw
    if gold:
        scores = {name: [answer_contained(answered[name][i], items[i].answers) for i in gold] for name in answered}
        for ref, by_mode in compare_modes(scores, list(references), logliks, agreements, seed=seed).items():
            for name, c in by_mode.items():
                results[name].setdefault("compared", {})[ref] = c
    return results


def per_question(items: list[QAItem], results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item with its answer in every mode (moved out of each mode's `predictions`), so two modes can be
    compared question by question afterwards (`python -m benchmarks.paired`)."""
    answered = {mode: r.pop("predictions") for mode, r in results.items()}
    return [{"id": it.id, "question": it.question, "answers": list(it.answers),
             "predictions": {mode: answers[i] for mode, answers in answered.items()}} for i, it in enumerate(items)]


def qa_markdown(dataset: str, record: dict[str, Any], results: dict[str, Any]) -> str:
    """One table per dataset: mode, positions, ratio, contained/F1/EM with 95% intervals."""
    lines = [f"**{dataset}** — {record['split']}, n = {record['n']}, seed {record['seed']}", "",
             "| mode | context positions | ratio | contained (95% CI) | contained / raw (paired 95% CI) | F1 | EM | "
             "abstention (unanswerable) | repeated 4-gram |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for mode, r in results.items():
        c = r.get("contained")
        contained = f"{c['mean']:.3f} ({c['ci95'][0]:.3f}-{c['ci95'][1]:.3f})" if c else "-"
        ratio = f"{r['compression_ratio']:.1f}x" if r.get("compression_ratio") else "-"
        vs_raw = ratio_cell(r.get("contained_vs_raw"))
        f1 = f"{r['f1']['mean']:.3f}" if "f1" in r else "-"
        em = f"{r['exact_match']['mean']:.3f}" if "exact_match" in r else "-"
        ab = f"{r['abstention']['mean']:.3f}" if "abstention" in r else "-"
        loops = f"{r['repeated_4gram']['mean']:.3f}" if "repeated_4gram" in r else "-"
        lines.append(f"| {mode} | {r['mean_context_positions']:.0f} | {ratio} | {contained} | {vs_raw} | {f1} | {em} | {ab} "
                     f"| {loops} |")
    compared: dict[str, dict[str, Any]] = {}
    for mode, r in results.items():
        for ref, c in r.get("compared", {}).items():
            compared.setdefault(ref, {})[mode] = c
    return "\n".join(lines) + "\n" + ("\n" + comparison_markdown(compared) if compared else "")


def ratio_cell(vs_raw: dict[str, Any] | None) -> str:
    """A table cell for `contained_vs`: "0.95x (0.80-1.10)", or "-"."""
    return f"{vs_raw['ratio']:.2f}x ({vs_raw['ci95'][0]:.2f}-{vs_raw['ci95'][1]:.2f})" if vs_raw else "-"
