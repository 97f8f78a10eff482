"""Fidelity suite: how much of a text a memory holds, read back in autoencoding/restate mode.

Requirements: held-out plain text (default: WikiText-2 test, never a training source).
Inputs: compressors; windows of exactly `span` decoder tokens. Metrics: BLEU-4 over token ids,
exact match of the whole window, token accuracy, each with a bootstrap interval.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..compressors.base import Compressor
from ..decoding import reconstruct_token_ids
from .metrics import bleu4, bootstrap_ci, token_accuracy


def held_out_windows(texts: list[str], tokenizer, span: int, limit: int) -> list[str]:
    """`limit` evenly spaced windows of `span` tokens from the concatenated texts (deterministic)."""
    ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
    count = len(ids) // span
    if count == 0:
        return []
    step = max(1, count // limit)
    return [tokenizer.decode(ids[i * span : (i + 1) * span]) for i in range(0, count, step)][:limit]


def run_fidelity(compressors: list[Compressor], texts: list[str], spans: list[int], limit: int,
                 seed: int) -> dict[str, Any]:
    """Compress and reconstruct each window with each compressor; aggregate the metrics."""
    rows, examples = [], []
    for comp in compressors:
        for span in spans:
            windows = held_out_windows(texts, comp.decoder.tokenizer, span, limit)
            scores: dict[str, list[float]] = {"bleu4": [], "exact_match": [], "token_accuracy": []}
            ratios, seconds = [], 0.0
            for i, window in enumerate(tqdm(windows, desc=f"fidelity {comp.kind} span {span}", leave=False)):
                reference = comp.tokenize(window)
                start = time.perf_counter()
                prompt = comp.compress(window)
                hypothesis = reconstruct_token_ids(comp, prompt, max_new_tokens=len(reference) + 16)
                seconds += time.perf_counter() - start
                ratios.append(prompt.compression_ratio)
                scores["bleu4"].append(bleu4(hypothesis, reference))
                scores["exact_match"].append(float(hypothesis == reference))
                scores["token_accuracy"].append(token_accuracy(hypothesis, reference))
                if i < 2:
                    examples.append({"compressor": comp.kind, "span": span, "original": window,
                                     "reconstruction": comp.decoder.tokenizer.decode(hypothesis)})
            row = {"compressor": comp.kind, "version": comp.version, "trained": comp.trained, "span_tokens": span,
                   "n": len(windows), "compression_ratio": sum(ratios) / max(1, len(ratios)),
                   "seconds_per_window": seconds / max(1, len(windows))}
            for name, values in scores.items():
                if values:
                    mean, low, high = bootstrap_ci(values, seed=seed)
                    row[name] = {"mean": mean, "ci95": [low, high]}
            rows.append(row)
    return {"rows": rows, "examples": examples}


def fidelity_markdown(result: dict[str, Any]) -> str:
    """A table of the fidelity rows plus a couple of reconstructions beside their originals."""
    lines = ["| compressor | trained | span | ratio | BLEU-4 (95% CI) | exact match | token accuracy | n |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        b = r.get("bleu4", {"mean": float("nan"), "ci95": [float("nan")] * 2})
        lines.append(f"| {r['compressor']} | {r['trained']} | {r['span_tokens']} | {r['compression_ratio']:.2f}x | "
                     f"{b['mean']:.3f} ({b['ci95'][0]:.3f}-{b['ci95'][1]:.3f}) | "
                     f"{r.get('exact_match', {}).get('mean', float('nan')):.3f} | "
                     f"{r.get('token_accuracy', {}).get('mean', float('nan')):.3f} | {r['n']} |")
    for ex in result["examples"][:4]:
        lines += ["", f"**{ex['compressor']}, {ex['span']} tokens**", "", "original:", "",
                  _quote(ex["original"]), "", "reconstruction:", "", _quote(ex["reconstruction"])]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip()[:600] or "(empty)").splitlines())


def load_fidelity_texts(data: str | None, root: Path | None) -> list[str]:
    """Held-out text: a user's .txt / {"text"} JSONL file, else WikiText-2 test."""
    from ..data import readers

    if data is None:
        return readers.load_text("wikitext2-test", root=root)
    path = Path(data)
    return readers.load_jsonl_text(path) if path.suffix == ".jsonl" else [readers.read_text_file(path)]
