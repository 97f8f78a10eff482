"""Efficiency suite: raw vs compressed context at growing lengths, measured in one run.

After one untimed warm-up pass per mode, for each context length and mode: compression (encoding)
seconds, prefill seconds, time to first token (compression + prefill), decode tokens/s, KV-cache bytes
(from the cache's shape: layers x 2 x kv-heads x head-dim x positions x bytes), the process's peak
resident memory while compressing, and the peak rise of resident memory while answering.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from ..compressors.base import Compressor
from .record import PeakRss

QUESTION = "What is this text about?"


def kv_bytes_per_position(comp: Compressor) -> int:
    """Bytes the decoder's KV cache takes per position."""
    cfg = comp.decoder.model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * heads * head_dim * comp.decoder.dtype.itemsize


def run_efficiency(modes: dict[str, Compressor], text: str, lengths: list[int], new_tokens: int) -> dict[str, Any]:
    """Time every mode at every length; ratios are raw / mode within the same run."""
    any_comp = next(iter(modes.values()))
    ids = any_comp.decoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    # One untimed pass per mode on a short text first: one-off work (the prompt prefix's cache, first-call
    # allocations) is paid once per process, not per passage, and would otherwise land on the first length.
    warm = any_comp.decoder.tokenizer.decode(ids[:64])
    for comp in modes.values():
        comp.answer(QUESTION, [warm] if comp.reads_text else [comp.compress(warm)], max_new_tokens=2)
    rows = []
    for length in tqdm(lengths, desc="efficiency: context lengths", leave=False):
        if length > len(ids):
            raise ValueError(f"the efficiency text has {len(ids)} tokens, fewer than the {length} asked for")
        context = any_comp.decoder.tokenizer.decode(ids[:length])
        for name, comp in modes.items():
            with PeakRss() as compressing:
                start = time.perf_counter()
                ctx = [context] if comp.reads_text else [comp.compress(context)]
                compress = 0.0 if comp.reads_text else time.perf_counter() - start
            with PeakRss() as mem:
                ans = comp.answer(QUESTION, ctx, max_new_tokens=new_tokens)
            decode = (ans.new_tokens - 1) / (ans.seconds - ans.prefill_seconds) if ans.new_tokens > 1 else None
            rows.append({
                "mode": name, "context_tokens": ans.source_tokens, "decoder_positions": ans.input_positions,
                "compress_seconds": compress, "prefill_seconds": ans.prefill_seconds,
                "ttft_seconds": compress + ans.prefill_seconds, "decode_tokens_per_s": decode,
                "new_tokens": ans.new_tokens,
                "kv_cache_mb": (ans.input_positions + ans.new_tokens) * kv_bytes_per_position(comp) / 2**20,
                "peak_rss_mb": mem.peak_mb,
                "compress_resident_mb": None if comp.reads_text else compressing.resident_mb,
            })
    by_key = {(r["mode"], r["context_tokens"]): r for r in rows}
    baseline = next((name for name, comp in modes.items() if comp.reads_text), None)
    for r in rows:
        raw = by_key.get((baseline, r["context_tokens"]))
        if raw and r["mode"] != baseline:
            r["speedup_ttft_vs_raw"] = raw["ttft_seconds"] / r["ttft_seconds"]
            r["speedup_prefill_vs_raw"] = raw["prefill_seconds"] / r["prefill_seconds"]
            r["kv_reduction_vs_raw"] = raw["kv_cache_mb"] / r["kv_cache_mb"]
    return {"rows": rows, "question": QUESTION, "new_tokens": new_tokens}


def efficiency_markdown(result: dict[str, Any]) -> str:
    """Table: one row per (length, mode)."""
    lines = ["| context tokens | mode | positions | compress s | prefill s | TTFT s | decode tok/s | KV MB | "
             "compress peak RSS MB | answer RSS rise MB | TTFT speed-up vs raw |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        decode = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-"
        speed = f"{r['speedup_ttft_vs_raw']:.2f}x" if "speedup_ttft_vs_raw" in r else "-"
        resident = r.get("compress_resident_mb")
        resident = "-" if resident is None else f"{resident:.0f}"
        lines.append(f"| {r['context_tokens']} | {r['mode']} | {r['decoder_positions']} | {r['compress_seconds']:.2f} | "
                     f"{r['prefill_seconds']:.2f} | {r['ttft_seconds']:.2f} | {decode} | {r['kv_cache_mb']:.1f} | "
                     f"{resident} | {r['peak_rss_mb']:.0f} | {speed} |")
    return "\n".join(lines) + "\n"
