"""kvzip: keep the decoder's own keys and values that it needs to repeat the passage (no training).

KVzip (arXiv 2505.23416), as measured for this project in shared/research/kv-deep-soft-prompts.md:
1. Prefill the answer prompt's prefix, then the passage; keep the passage's cache entries.
2. Teacher-forced reconstruction: continue with the repeat request and the passage's own tokens.
3. Score each passage entry (layer, KV head, position) by the largest attention it receives from a
   repeat query, over the query heads that share that KV head.
4. Keep the top `keep` share of all the passage's entries together (one budget over every layer
   and head: some heads keep most of the passage, others almost nothing).

The prefix is never evicted (it is recomputed at answer time and holds the attention sinks).
Passages longer than `window_tokens` are scored window by window, each window encoded after up to
`lead_tokens` of the text before it (for the first window: the caller's `leads`, e.g. the document
text before a RAG node) and given the same share of its own entries, so peak memory
depends on the window, not on the passage: the cache of prefix + lead + 2 x window tokens plus one
layer's attention weights (query heads x (window + repeat request) x those tokens, float32).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import kv_attention
from ..backbones import DEFAULT_DECODER, DecoderBackbone
from ..errors import ConfigError
from ..kv_attention import KvView, rerotate
from ..kv_memory import STORAGE_DTYPES, KvMemory, entry_owners, prune_jointly, token_ids_sha256
from ..soft_prompt import Piece, text_sha256
from ..text import check_texts_and_leads
from .base import Compressor, register_compressor


@dataclass(frozen=True)  # the compressor hashes it once into its version
class KvzipConfig:
    """How much of each passage's KV cache to keep, and how it is stored."""

    decoder: str = DEFAULT_DECODER
    ratio: float = 4.0  # keep 1/ratio of the passage's (layer, head, position) entries
    keep_fraction: float | None = None  # instead of ratio: the share kept (1.0 keeps everything)
    storage: str = "float16"  # "float16", "float32", "int8", "int4" or "int2"
    quant_group: int = 128  # int4 / int2: entries per key scale group (a power of two >= 8; see kv_quant)
    # Store each passage at this ratio (<= ratio) and, when memories are read together, prune them to
    # `ratio` overall with one budget: the passage the decoder needs most keeps most.
    stored_ratio: float | None = None
    window_tokens: int = 1024
    lead_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("ratio", "keep_fraction", "stored_ratio", "window_tokens", "lead_tokens"):
            value = getattr(self, name)
            if value is None and name in ("keep_fraction", "stored_ratio"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"kvzip {name} must be a number, got {value!r}")
        if self.ratio <= 1:
            raise ConfigError(f"kvzip ratio must be > 1 (4 keeps a quarter of the entries), got {self.ratio}; "
                              "to keep everything set keep_fraction=1.0")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"kvzip keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.stored_ratio is not None and not 1 <= self.stored_ratio <= 1 / self.keep:
            raise ConfigError(f"kvzip stored_ratio must be between 1 and the read ratio {1 / self.keep:g}, "
                              f"got {self.stored_ratio}")
        if self.storage not in STORAGE_DTYPES:
            raise ConfigError(f"kvzip storage must be one of {sorted(STORAGE_DTYPES)}, got {self.storage!r}")
        if isinstance(self.quant_group, bool) or not isinstance(self.quant_group, int) or self.quant_group < 8 \
                or self.quant_group & (self.quant_group - 1):
            raise ConfigError(f"kvzip quant_group must be a power of two >= 8, got {self.quant_group!r}")
        if self.window_tokens < 16 or self.lead_tokens < 0:
            raise ConfigError("kvzip window_tokens must be >= 16 and lead_tokens >= 0")

    @property
    def keep(self) -> float:
        """Share of the passages' entries the decoder reads."""
        return self.keep_fraction if self.keep_fraction is not None else 1 / self.ratio

    @property
    def stored_keep(self) -> float:
        """Share of each window's entries that a memory stores."""
        return self.keep if self.stored_ratio is None else 1 / self.stored_ratio


class KvzipCompressor(Compressor):
    """Compresses a passage into the decoder's kept KV entries (`KvMemory`); nothing is trained."""

    uses_leads = True

    def __init__(self, config: KvzipConfig, decoder: DecoderBackbone) -> None:
        super().__init__(config, decoder)
        kv_attention.require(decoder.model)
        self.trained = True  # training-free: what it claims is what it is
        # Every store lookup asks for the version: render the prefix and hash the config once.
        settings = {k: v for k, v in asdict(config).items()  # quant_group: only int4 / int2 memories differ
                    if k != "decoder" and (k != "quant_group" or config.storage in ("int4", "int2"))}
        settings["prefix"] = token_ids_sha256(self._prefix_ids())
        self._version = "kvzip-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def build(cls, config: KvzipConfig, *, device: str = "auto", dtype: str = "auto", **_: Any) -> KvzipCompressor:
        """Load the decoder named in `config`."""
        from ..backbones import load_decoder

        return cls(config, load_decoder(config.decoder, device=device, dtype=dtype))

    @property
    def label(self) -> str:
        """The spec that rebuilds this compressor: "kvzip", or "kvzip:ratio=8,storage=int8"."""
        default = KvzipConfig()
        changed = [f"{k}={v}" for k, v in asdict(self.config).items() if k != "decoder" and v != getattr(default, k)]
        return "kvzip" + (":" + ",".join(changed) if changed else "")

    @property
    def version(self) -> str:
        """Scoring settings + prompt prefix: memories of another version hold other entries."""
        return self._version

    def _prefix_ids(self) -> list[int]:
        from ..generation import context_prefix_ids

        return context_prefix_ids(self.decoder.tokenizer)

    @torch.no_grad()
    def compress_many(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False,
                      leads: Sequence[str | None] | None = None) -> list[KvMemory]:
        """One KvMemory per text, each encoded after the last `lead_tokens` of its lead (the text before
        it in its document), if given. Texts are scored one at a time (`batch_size` is unused)."""
        from transformers import DynamicCache

        from ..generation import prompt_texts

        texts = check_texts_and_leads(texts, leads)
        leads = [None] * len(texts) if leads is None else list(leads)
        tok, model = self.decoder.tokenizer, self.decoder.model
        prefix_ids = self._prefix_ids()
        repeat_ids = tok(prompt_texts(tok, "repeat")[1], add_special_tokens=False)["input_ids"]
        out = model(input_ids=self._ids(prefix_ids), use_cache=True, logits_to_keep=1)
        prefix = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        provenance = dict(prefix_tokens=len(prefix_ids), prefix_sha256=token_ids_sha256(prefix_ids), compressor=self.kind,
                          compressor_version=self.version, backbone=self.backbone_id)
        quant = dict(quant_group=self.config.quant_group, rotary_emb=kv_attention.rotary(model))
        memories = []
        step, lead_tokens = self.config.window_tokens, self.config.lead_tokens
        for text, lead in tqdm(list(zip(texts, leads, strict=True)), desc="kvzip: scoring passages", unit="passage",
                               disable=not progress):
            lead = lead if lead_tokens else None  # lead_tokens=0: encoded apart, whatever the caller passed
            ids, sha = self.tokenize(text), text_sha256(text)
            before = self.tokenize(lead) if lead else []
            parts = []
            for start in range(0, len(ids), step):
                cache = DynamicCache(config=model.config)
                for i, (k, v) in enumerate(prefix):
                    cache.update(k, v, i)
                context = (before + ids[:start])[max(0, len(before) + start - lead_tokens):] if lead_tokens else []
                parts.append(self._score_window(context, ids[start:start + step], start, cache, repeat_ids))
            memory = _join_windows(parts, len(ids), sha, self.config.storage, provenance | quant)
            if lead:
                memory.metadata["lead_sha256"] = text_sha256(lead)
            memories.append(memory)
        return memories

    def budget_contexts(self, contexts: Sequence[Any]) -> list[Any]:
        """With `stored_ratio`, the KV memories among `contexts` pruned to `ratio` with one budget."""
        if self.config.stored_ratio is None:
            return list(contexts)
        memories = [c for c in contexts if isinstance(c, KvMemory)]
        entries = round(sum(m.source_tokens * m.layers * m.kv_heads for m in memories) * self.config.keep)
        pruned = iter(prune_jointly(memories, entries))
        return [next(pruned) if isinstance(c, KvMemory) else c for c in contexts]

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.decoder.device)

    def _score_window(self, lead: list[int], window: list[int], start: int, cache, repeat_ids: list[int]):
        """(keys, values, positions, counts) of the kept entries of `window`, the passage's tokens from
        `start`, encoded right after the prefix cache and `lead` (the text before it)."""
        model = self.decoder.model
        prefix_len = cache.get_seq_length()
        seq = lead + window
        positions = torch.arange(prefix_len, prefix_len + len(seq), device=self.decoder.device)[None]
        out = model(input_ids=self._ids(seq), position_ids=positions, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        col = prefix_len + len(lead)
        layers = out.past_key_values.layers
        keys = torch.stack([layer.keys[0, :, col:col + len(window)] for layer in layers])  # (L, H, w, d)
        # Stored keys are rotated as if the passage started right after the prefix.
        keys = rerotate(keys, start - len(lead), kv_attention.rotary(model))
        values = torch.stack([layer.values[0, :, col:col + len(window)] for layer in layers])
        repeat = repeat_ids + window
        view = KvView(record=True)
        end = prefix_len + len(seq)
        positions = torch.arange(end, end + len(repeat), device=self.decoder.device)[None]
        model(input_ids=self._ids(repeat), position_ids=positions, past_key_values=out.past_key_values,
              use_cache=True, logits_to_keep=1, kv_view=view)
        scores = torch.stack([view.scores[i][0, :, col:col + len(window)] for i in range(len(layers))])
        n_layers, n_heads, w, dim = keys.shape
        budget = max(1, round(w * n_layers * n_heads * self.config.stored_keep))
        kept = scores.reshape(-1).topk(budget).indices.sort().values  # flat (layer, head, position) order
        counts = torch.bincount(kept // w, minlength=n_layers * n_heads).view(n_layers, n_heads)
        return (keys.reshape(-1, dim)[kept], values.reshape(-1, dim)[kept], start + kept % w, counts,
                scores.reshape(-1)[kept])


def _join_windows(parts: list, n_tokens: int, sha: str, storage: str, provenance: dict) -> KvMemory:
    """One memory from per-window entries, re-ordered by (layer, head, position)."""
    keys = torch.cat([p[0] for p in parts])
    values = torch.cat([p[1] for p in parts])
    positions = torch.cat([p[2] for p in parts]).cpu()
    scores = torch.cat([p[4] for p in parts]).cpu()
    counts = torch.stack([p[3] for p in parts]).sum(0).cpu()
    owners = torch.cat([entry_owners(p[3]) for p in parts])
    order = torch.argsort(owners * n_tokens + positions, stable=True)
    pieces = (Piece(sha, 0, n_tokens, 0, n_tokens),)
    return KvMemory.from_entries(keys[order.to(keys.device)], values[order.to(keys.device)], positions[order],
                                 counts, storage, pieces=pieces, scores=scores[order], **provenance)


register_compressor("kvzip", KvzipConfig, KvzipCompressor)
