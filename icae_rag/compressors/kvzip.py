"""kvzip: keep the decoder's own keys and values that it needs to repeat the passage (no training).

KVzip (arXiv 2505.23416), as measured for this project in shared/research/kv-deep-soft-prompts.md:
1. Prefill the answer prompt's prefix, then the passage; keep the passage's cache entries.
2. Teacher-forced reconstruction: continue with the repeat request and the passage's own tokens.
3. Score each passage entry (layer, KV head, position) by the largest attention it receives from a
   repeat query, over the query heads that share that KV head.
4. Keep the top `keep` share of all the passage's entries together (one budget over every layer
   and head: some heads keep most of the passage, others almost nothing).

5. Adaptive budget (the default): instead of one fixed share, each window keeps the smallest share
   of a ladder (1/16 ... 1/1.5, then everything) whose memory passes a self-check: read in the
   repeat prompt after what the scoring pass read before the window (nothing, for a passage
   encoded apart; its lead otherwise, kept whole), the pruned memory must lead the decoder to the
   same next-token distributions over the window as the full memory does: overlap (sum over the
   vocabulary of min(p_full, p_pruned), 1.0 = identical) averaged over every block of about
   CHECK_BLOCK_TOKENS consecutive tokens, the lowest block mean at least `fidelity`. The
   check reads the decoder's own distributions, so the budget follows the decoder as well as the
   text. The full memory's distributions come from the scoring pass itself; each ladder step tried
   costs one forward over the window (at most two are tried, see `_search`).
6. Look-up probes the repeat did not choose: the repeat is teacher-forced through the whole passage,
   so after a few tokens it is easy, and a memory can pass it while losing an exact token a question
   asks for (a number, a flag, a name). So the check also cues the decoder, in the same repeat
   prompt, with the PROBE_CUE tokens before each of the window's PROBES most surprising tokens
   (surprisal under the decoder reading the text itself, from the scoring pass's prefill) and
   compares the next PROBE_SPAN tokens' distributions from the candidate and from the full memory.
   A memory passes when the repeat's worst block and the probes' mean overlap both reach
   `fidelity`. The probes cost two short forwards per window (the full memory's, once, and the
   candidate's per ladder step).

The prefix is never evicted (it is recomputed at answer time and holds the attention sinks).
Passages longer than `window_tokens` are scored window by window. Each window after the first reads
the last `lead_tokens` entries of the passage before it as the passage computed them (carried from
the previous window's cache, not computed again), the first window follows up to `lead_tokens` of
the caller's `leads` (e.g. the document text before a RAG node); each window is given its own
budget. Each passage token is computed once, and peak memory depends on the window, not on the
passage: the cache of prefix + lead + 2 x window tokens plus one layer's attention weights (query
heads x (window + repeat request) x window tokens, float32).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ..decoding import build_prompt, context_prefix_ids, prompt_texts, target_logits
from ..decoding.prefill import _RowCache
from ..errors import ConfigError, InvalidInputError
from ..memories.base import Memory
from ..memories.kv_memory import (
    STORAGE_DTYPES,
    KvMemory,
    entry_owners,
    prune_jointly,
    token_ids_sha256,
)
from ..memories.soft_prompt import Piece, text_sha256
from ..models import kv_attention
from ..models.backbones import DEFAULT_DECODER, DecoderBackbone
from ..models.hf_compat import cache_arg, output_cache
from ..models.kv_attention import KvView, rerotate
from .base import Compressor

# Ratios an adaptive memory may take, smallest memory first; keeping everything (1.0) always passes.
LADDER = (16.0, 12.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5)
# The first ratio the check tries (the ladder step at or below it).
START_RATIO = 4.0
# The overlap an adaptive memory must keep by default (docs/kvzip.md: how it was chosen).
DEFAULT_FIDELITY = 0.96
# The check grades every block of about this many tokens of a window, not the window's mean: a fact
# lost in one part of a long window is not averaged away by the rest, so a fidelity asks the same of
# a 100-token paragraph and a 512-token node.
CHECK_BLOCK_TOKENS = 64
# Look-up probes per window: how many, the cue before each probed token, and the tokens compared.
PROBES, PROBE_CUE, PROBE_SPAN = 8, 12, 4
# Names the self-check's algorithm in the compressor version: another check keeps other entries.
CHECK = f"repeat-overlap-2-block{CHECK_BLOCK_TOKENS}+probes{PROBES}-cue{PROBE_CUE}-span{PROBE_SPAN}"
# Names how a long passage's windows see the text before them, in the compressor version: windows
# after the first read the previous window's last entries as the passage computed them.
WINDOWS = "carried-lead-1"


@dataclass(frozen=True)  # the compressor hashes it once into its version
class KvzipConfig:
    """How much of each passage's KV cache to keep, and how it is stored.

    By default each window's budget is chosen by a self-check (`fidelity`, see the module doc); set
    `ratio` or `keep_fraction` for one fixed share instead.
    """

    decoder: str = DEFAULT_DECODER
    # Adaptive: the smallest memory whose next-token distributions over its passage overlap the full
    # memory's by at least this much (0 < fidelity <= 1; None: DEFAULT_FIDELITY).
    fidelity: float | None = None
    max_ratio: float = 16.0  # adaptive: never keep less than 1/max_ratio of a window's entries
    ratio: float | None = None  # fixed: keep 1/ratio of the passage's (layer, head, position) entries
    keep_fraction: float | None = None  # fixed, instead of ratio: the share kept (1.0 keeps everything)
    storage: str = "float16"  # "float16", "float32", "int8", "int4" or "int2"
    quant_group: int = 128  # int4 / int2: entries per key scale group (a power of two >= 8; see kv_quant)
    # Store each passage at this ratio (<= ratio) and, when memories are read together, prune them to
    # `ratio` overall with one budget: the passage the decoder needs most keeps most.
    stored_ratio: float | None = None
    window_tokens: int = 512
    lead_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("fidelity", "max_ratio", "ratio", "keep_fraction", "stored_ratio", "window_tokens", "lead_tokens"):
            value = getattr(self, name)
            if value is None and name in ("fidelity", "ratio", "keep_fraction", "stored_ratio"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"kvzip {name} must be a number, got {value!r}")
        if self.ratio is not None and self.keep_fraction is not None:
            raise ConfigError("kvzip takes ratio or keep_fraction, not both (ratio=4 is keep_fraction=0.25)")
        if self.fidelity is not None and not self.adaptive:
            raise ConfigError("kvzip fidelity chooses each passage's ratio; it cannot be combined with a fixed "
                              "ratio or keep_fraction: pass one of them")
        if self.fidelity is not None and not 0 < self.fidelity <= 1:
            raise ConfigError(f"kvzip fidelity must be in (0, 1] (0.96: the memory keeps 96% of what the decoder "
                              f"draws from the full passage), got {self.fidelity}")
        if self.max_ratio < 1:
            raise ConfigError(f"kvzip max_ratio must be >= 1 (1 keeps everything), got {self.max_ratio}")
        if self.ratio is not None and self.ratio <= 1:
            raise ConfigError(f"kvzip ratio must be > 1 (4 keeps a quarter of the entries), got {self.ratio}; "
                              "to keep everything set keep_fraction=1.0")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"kvzip keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.stored_ratio is not None and (self.adaptive or not 1 <= self.stored_ratio <= 1 / self.keep):
            raise ConfigError("kvzip stored_ratio needs a fixed ratio and must be between 1 and it, got "
                              f"stored_ratio={self.stored_ratio} with ratio={self.ratio}")
        if self.storage not in STORAGE_DTYPES:
            raise ConfigError(f"kvzip storage must be one of {sorted(STORAGE_DTYPES)}, got {self.storage!r}")
        if isinstance(self.quant_group, bool) or not isinstance(self.quant_group, int) or self.quant_group < 8 \
                or self.quant_group & (self.quant_group - 1):
            raise ConfigError(f"kvzip quant_group must be a power of two >= 8, got {self.quant_group!r}")
        if self.window_tokens < 16 or self.lead_tokens < 0:
            raise ConfigError("kvzip window_tokens must be >= 16 and lead_tokens >= 0")

    @property
    def adaptive(self) -> bool:
        """Whether each window's budget is chosen by the self-check (no fixed ratio or keep_fraction)."""
        return self.ratio is None and self.keep_fraction is None

    @property
    def target_fidelity(self) -> float | None:
        """The overlap adaptive memories must keep (None in fixed mode)."""
        if not self.adaptive:
            return None
        return DEFAULT_FIDELITY if self.fidelity is None else self.fidelity

    @property
    def ladder(self) -> tuple[float, ...]:
        """Adaptive mode: the ratios that may be chosen, smallest memory first (else everything is kept)."""
        return tuple(r for r in LADDER if r <= self.max_ratio)

    @property
    def keep(self) -> float | None:
        """Fixed mode: share of the passages' entries the decoder reads (None when adaptive)."""
        if self.adaptive:
            return None
        return self.keep_fraction if self.keep_fraction is not None else 1 / self.ratio

    @property
    def stored_keep(self) -> float | None:
        """Fixed mode: share of each window's entries that a memory stores (None when adaptive)."""
        return self.keep if self.stored_ratio is None else 1 / self.stored_ratio


class KvzipCompressor(Compressor):
    """Compresses a passage into the decoder's kept KV entries (`KvMemory`); nothing is trained."""

    kind = "kvzip"
    config_class = KvzipConfig
    uses_leads = True

    def __init__(self, config: KvzipConfig, decoder: DecoderBackbone) -> None:
        super().__init__(config, decoder)
        kv_attention.require(decoder.model)
        self.trained = True  # training-free: what it claims is what it is
        self._prefix_kv: tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        # Every store lookup asks for the version: render the prefix and hash the config once.
        # Settings that change no entry stay out, so memories made before they existed keep their version:
        # quant_group outside int4 / int2, the adaptive settings in fixed mode.
        unused = {"decoder"} | ({"quant_group"} if config.storage not in ("int4", "int2") else set()) | (
            set() if config.adaptive else {"fidelity", "max_ratio"})
        settings = {k: v for k, v in asdict(config).items() if k not in unused}
        settings["prefix"] = token_ids_sha256(self._prefix_ids())
        settings["windows"] = WINDOWS
        if config.adaptive:
            settings |= {"fidelity": config.target_fidelity, "ladder": config.ladder, "check": CHECK}
        self._version = "kvzip-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

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
        return context_prefix_ids(self.decoder.tokenizer)

    @torch.no_grad()
    def compress_many(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False,
                      leads: Sequence[str | None] | None = None) -> list[KvMemory]:
        """One KvMemory per text, each encoded after the last `lead_tokens` of its lead (the text before
        it in its document), if given. Of every `batch_size` texts, those of one window with no lead are
        scored together, as many per forward as fit in one window (`_apart_groups`); the rest one
        window at a time. Adaptive memories record their chosen ratio and measured fidelity in `metadata`."""
        texts, leads = self.check_inputs(texts, leads)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        tok, model = self.decoder.tokenizer, self.decoder.model
        repeat_ids = tok(prompt_texts(tok, "repeat")[1], add_special_tokens=False)["input_ids"]
        prefix = self._prefix_cache()
        prefix_row = _RowCache.of_text(prefix)  # the checks' prompts start with the same prefix
        provenance = self._provenance()
        quant = dict(quant_group=self.config.quant_group, rotary_emb=kv_attention.rotary(model))
        memories = []
        step, lead_tokens = self.config.window_tokens, self.config.lead_tokens
        bar = tqdm(total=len(texts), desc="kvzip: scoring passages", unit="passage", disable=not progress)
        for lo in range(0, len(texts), batch_size):
            chunk = range(lo, min(lo + batch_size, len(texts)))
            encoded = {i: self.tokenize(texts[i]) for i in chunk}
            shas = {i: text_sha256(texts[i]) for i in chunk}
            # lead_tokens=0: encoded apart, whatever the caller passed
            chunk_leads = {i: leads[i] if lead_tokens else None for i in chunk}
            chosen: dict[int, list[_Kept]] = {}
            for group in _apart_groups([i for i in chunk if not chunk_leads[i] and len(encoded[i]) <= step],
                                       encoded, step):
                # Each group's windows are chosen before the next group is scored: one group's check
                # references (window x vocabulary each) are alive at a time, as for a single window.
                for i, window in zip(group, self._score_rows([encoded[i] for i in group], repeat_ids), strict=True):
                    chosen[i] = [self._choose(window, shas[i], provenance, prefix_row)]
            for i in chunk:
                ids, lead, sha = encoded[i], chunk_leads[i], shas[i]
                before = self.tokenize(lead)[-lead_tokens:] if lead else []
                parts = chosen.get(i) or self._windows(ids, before, sha, provenance, prefix_row, repeat_ids)
                memory = _join_windows(parts, len(ids), sha, self.config.storage, provenance | quant)
                memory.metadata |= _budget_metadata(parts, self.config)
                if lead:
                    memory.metadata["lead_sha256"] = text_sha256(lead)
                memories.append(memory)
                bar.update()
        bar.close()
        return memories

    def _windows(self, ids: list[int], before: list[int], sha: str, provenance: dict, prefix_row: _RowCache,
                 repeat_ids: list[int]) -> list[_Kept]:
        """A passage's kept entries window by window, the first window after `before` (its lead's tokens)."""
        from transformers import DynamicCache

        prefix, step = self._prefix_cache(), self.config.window_tokens
        carried = [(k[:, :, :0], v[:, :, :0]) for k, v in prefix]  # nothing precedes the first window
        parts = []
        for start in range(0, len(ids), step):
            cache = DynamicCache(config=self.decoder.model.config)
            for layer, ((k, v), (ck, cv)) in enumerate(zip(prefix, carried, strict=True)):
                cache.update(torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2), layer)
            window, carried = self._score_window(before if start == 0 else [], ids[start:start + step], start,
                                                 len(before), cache, repeat_ids)
            parts.append(self._choose(window, sha, provenance, prefix_row))
        return parts

    def _provenance(self) -> dict[str, Any]:
        """What every memory (and every memory a check reads) records of where it came from."""
        prefix_ids = self._prefix_ids()
        return dict(prefix_tokens=len(prefix_ids), prefix_sha256=token_ids_sha256(prefix_ids), compressor=self.kind,
                    compressor_version=self.version, backbone=self.backbone_id)

    def _prefix_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prompt prefix's per-layer (keys, values): the same for every passage, computed once per device."""
        where = (self.decoder.device, self.decoder.dtype)
        if self._prefix_kv is None or self._prefix_kv[0] != where:
            out = self.decoder.model(input_ids=self._ids(self._prefix_ids()), use_cache=True, logits_to_keep=1)
            self._prefix_kv = (where, [(layer.keys, layer.values) for layer in output_cache(out).layers])
        return self._prefix_kv[1]

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

    def _score_rows(self, windows: list[list[int]], repeat_ids: list[int]) -> list[_Window]:
        """One `_Window` per passage, the passages scored together: one prefill and one repeat forward
        over right-padded rows. Row i's tokens have the positions they have when scored alone, and
        padding is masked as a key (and, in `kv_attention`, as a scoring query)."""
        from transformers import DynamicCache

        model, device = self.decoder.model, self.decoder.device
        prefix = self._prefix_cache()
        prefix_len, rows, longest = prefix[0][0].shape[2], len(windows), max(map(len, windows))
        pad = self.decoder.tokenizer.pad_token_id or 0  # any id: padded tokens are masked
        lengths = torch.tensor([len(w) for w in windows], device=device)[:, None]
        cache = DynamicCache(config=model.config)
        for layer, (k, v) in enumerate(prefix):
            cache.update(k.repeat(rows, 1, 1, 1), v.repeat(rows, 1, 1, 1), layer)
        real = torch.arange(longest, device=device)[None] < lengths
        mask = torch.cat([real.new_ones(rows, prefix_len), real], dim=1)
        ids = torch.tensor([w + [pad] * (longest - len(w)) for w in windows], device=device)
        positions = torch.arange(prefix_len, prefix_len + longest, device=device)[None].expand(rows, -1)
        adaptive = self.config.adaptive
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, **cache_arg(cache),
                    use_cache=True, logits_to_keep=longest if adaptive else 1)
        layers = output_cache(out).layers
        # Each row's repeat follows its own passage: positions run on from the passage's last token.
        repeat = torch.tensor([repeat_ids + w + [pad] * (longest - len(w)) for w in windows], device=device)
        span = len(repeat_ids) + longest
        mask = torch.cat([mask, torch.arange(span, device=device)[None] < len(repeat_ids) + lengths], dim=1)
        positions = prefix_len + lengths + torch.arange(span, device=device)[None]
        view = KvView(record=True, score_columns=(prefix_len, prefix_len + longest))
        scored = model(input_ids=repeat, attention_mask=mask.long(), position_ids=positions,
                       **cache_arg(output_cache(out)), use_cache=True,
                       logits_to_keep=longest + 1 if adaptive else 1, kv_view=view)
        scores = torch.stack([view.scores[i] for i in range(len(layers))])  # (L, rows, H, longest)
        result = []
        for row, window in enumerate(windows):
            w = len(window)
            keys = torch.stack([layer.keys[row, :, prefix_len:prefix_len + w] for layer in layers])  # (L, H, w, d)
            values = torch.stack([layer.values[row, :, prefix_len:prefix_len + w] for layer in layers])
            n_layers, n_heads, _, dim = keys.shape
            check = None
            if adaptive:
                empty = keys[:, :, :0]
                check = _Check(keys.reshape(-1, dim), empty, empty, 0,
                               torch.softmax(scored.logits[row, :w].float(), dim=-1),
                               _probes(window, _surprisal(out.logits[row, :w - 1], window)))
            result.append(_Window(keys.reshape(-1, dim), values.reshape(-1, dim),
                                  scores[:, row, :, :w].reshape(-1), 0, window, (n_layers, n_heads), check))
        return result

    def _score_window(self, lead: list[int], window: list[int], start: int, shift: int, cache,
                      repeat_ids: list[int]) -> tuple[_Window, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Every entry of `window` (the passage's tokens from `start`) with its score, and the entries to
        carry into the next window. `cache` holds the prefix and, after the first window, the last
        `lead_tokens` entries of the passage before `start` as the passage computed them; the first
        window follows `lead` (the caller's text before the passage, `shift` tokens, which moves every
        passage token `shift` positions on). Adaptive mode also keeps the full memory's next-token
        distributions over the repeated window (the check's reference)."""
        model = self.decoder.model
        # The prefix's length from its cached entries: rendering and tokenising the prompt again per window is wasted.
        prefix_len, cached = self._prefix_cache()[0][0].shape[2], cache.get_seq_length()
        seq = lead + window
        first = prefix_len + shift + start - len(lead)
        positions = torch.arange(first, first + len(seq), device=self.decoder.device)[None]
        adaptive = self.config.adaptive
        # Adaptive: the window's own logits too, whose surprising tokens the check probes.
        out = model(input_ids=self._ids(seq), position_ids=positions, **cache_arg(cache), use_cache=True,
                    logits_to_keep=len(window) if adaptive else 1)
        col, end = cached + len(lead), cached + len(seq)
        layers = output_cache(out).layers
        # Cloned: the repeat below extends these layers, and the carried entries must not keep it alive.
        carry = [(layer.keys[:, :, max(prefix_len, end - self.config.lead_tokens):end].clone(),
                  layer.values[:, :, max(prefix_len, end - self.config.lead_tokens):end].clone()) for layer in layers]
        raw_keys = torch.stack([layer.keys[0, :, col:end] for layer in layers])  # (L, H, w, d)
        # Stored keys are rotated as if the passage started right after the prefix.
        keys = rerotate(raw_keys, -shift, kv_attention.rotary(model))
        values = torch.stack([layer.values[0, :, col:end] for layer in layers])
        repeat = repeat_ids + window
        view = KvView(record=True, score_columns=(col, end))
        positions = torch.arange(first + len(seq), first + len(seq) + len(repeat), device=self.decoder.device)[None]
        scored = model(input_ids=self._ids(repeat), position_ids=positions, **cache_arg(output_cache(out)),
                       use_cache=True, logits_to_keep=len(window) + 1 if adaptive else 1, kv_view=view)
        scores = torch.stack([view.scores[i][0] for i in range(len(layers))])
        n_layers, n_heads, w, dim = keys.shape
        check = None
        if adaptive:
            # The check reads a candidate memory after the text the scoring pass read before the
            # window (its lead, kept whole; nothing for a passage encoded apart), every entry where
            # the scoring pass had it: then the scoring pass's distributions over the repeated window
            # are the check's reference.
            lead_keys = torch.stack([layer.keys[0, :, prefix_len:col] for layer in layers])
            lead_values = torch.stack([layer.values[0, :, prefix_len:col] for layer in layers])
            # The lead's first entry sits `first - cached` positions after the prefix (the passage
            # before it, not carried, leaves that gap).
            check = _Check(raw_keys.reshape(-1, dim), lead_keys, lead_values, first - cached,
                           torch.softmax(scored.logits[0, :-1].float(), dim=-1),
                           _probes(window, _surprisal(out.logits[0, :len(window) - 1], window)))
        return _Window(keys.reshape(-1, dim), values.reshape(-1, dim), scores.reshape(-1), start, window,
                       (n_layers, n_heads), check), carry

    def _choose(self, window: _Window, sha: str, provenance: dict, prefix_row: _RowCache) -> _Kept:
        """The window's kept entries: a fixed share, or the smallest ladder step that passes the check."""
        n_layers, n_heads = window.shape
        total = len(window.ids) * n_layers * n_heads
        if not self.config.adaptive:
            return _keep_top(window, max(1, round(total * self.config.stored_keep)), None)
        check = window.check
        probes = check.probes
        full_probes = self._probe_probs(self._check_memory(window, total, sha, provenance), probes, prefix_row)

        def overlap_at(ratio: float) -> float:
            memory = self._check_memory(window, max(1, round(total / ratio)), sha, provenance)
            repeat = _overlap(check.reference, self._repeat_probs(memory, window.ids, prefix_row))
            if not probes:
                return repeat
            return min(repeat, _probe_overlap(full_probes, self._probe_probs(memory, probes, prefix_row)))

        ratio, overlap = _search(overlap_at, self.config.ladder, self.config.target_fidelity)
        return _keep_top(window, max(1, round(total / ratio)), overlap)

    def _check_memory(self, window: _Window, budget: int, sha: str, provenance: dict) -> KvMemory:
        """What the check reads at this budget, as float32: the window's lead, whole, then the `budget`
        best entries of the window, at the positions the scoring pass gave them."""
        n_layers, n_heads = window.shape
        check, w = window.check, len(window.ids)
        lead = check.lead_keys.shape[2]
        kept = window.scores.topk(budget).indices
        owners = torch.cat([torch.arange(n_layers * n_heads, device=kept.device).repeat_interleave(lead), kept // w])
        positions = check.offset + torch.cat([torch.arange(lead, device=kept.device).repeat(n_layers * n_heads),
                                              lead + kept % w])
        keys = torch.cat([check.lead_keys.reshape(-1, check.keys.shape[1]), check.keys[kept]])
        values = torch.cat([check.lead_values.reshape(-1, window.values.shape[1]), window.values[kept]])
        return KvMemory.from_unordered(keys, values, positions, owners, window.shape, "float32",
                                       pieces=(Piece(sha, 0, check.offset + lead + w, 0, 1),), **provenance)

    def _repeat_probs(self, memory: KvMemory, ids: list[int], prefix_row: _RowCache | None = None) -> torch.Tensor:
        """The decoder's next-token distributions over `ids`, repeated from `memory` read alone."""
        prompt = build_prompt(self, [memory], mode="repeat")
        return torch.softmax(target_logits(self, [prompt], [ids], prefix_row=prefix_row)[0], dim=-1)

    def _probe_probs(self, memory: KvMemory, probes: list[tuple[list[int], list[int]]],
                     prefix_row: _RowCache | None = None) -> list[torch.Tensor]:
        """Per probe, the decoder's distributions over its span, cued in the repeat prompt by the tokens
        before it, reading `memory` alone (none for no probes)."""
        if not probes:
            return []
        prompt = build_prompt(self, [memory], mode="repeat")
        logits = target_logits(self, [prompt] * len(probes), [cue + span for cue, span in probes], prefix_row=prefix_row)
        return [torch.softmax(x[len(cue):], dim=-1) for x, (cue, _) in zip(logits, probes, strict=True)]


class _Check(NamedTuple):
    """What an adaptive window's check reads: the window's keys and its lead's keys and values as the
    scoring pass computed them (rotated for `prefix + offset + i`, i counted from the lead's first
    token), the full memory's repeat distributions (the reference) and the window's look-up probes
    (cue, span)."""

    keys: torch.Tensor
    lead_keys: torch.Tensor
    lead_values: torch.Tensor
    offset: int
    reference: torch.Tensor
    probes: list[tuple[list[int], list[int]]]


class _Window(NamedTuple):
    """One scored window: every entry flat by (layer, head, position), its score, the window's tokens,
    (layers, kv_heads), and in adaptive mode what its check reads."""

    keys: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    start: int
    ids: list[int]
    shape: tuple[int, int]
    check: _Check | None


class _Kept(NamedTuple):
    """A window's kept entries (by layer, head, position), per-head counts, and the check's overlap."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    counts: torch.Tensor
    scores: torch.Tensor
    source_tokens: int
    overlap: float | None


def _apart_groups(which: list[int], encoded: dict[int, list[int]], window_tokens: int) -> list[list[int]]:
    """Passages (`which`, keys of `encoded`) to score several per forward: shortest first, each group as
    many as fit in one window (rows x longest <= window_tokens, so peak memory stays bounded by the
    window). A passage left alone in its group is left out (`_score_window` scores it)."""
    groups: list[list[int]] = [[]]
    for i in sorted(which, key=lambda i: len(encoded[i])):
        if (len(groups[-1]) + 1) * len(encoded[i]) > window_tokens:
            groups.append([])
        groups[-1].append(i)
    return [g for g in groups if len(g) > 1]


def _keep_top(window: _Window, budget: int, overlap: float | None) -> _Kept:
    """The `budget` highest-scored entries of a window, over all layers and heads together."""
    w = len(window.ids)
    kept = window.scores.topk(budget).indices.sort().values  # flat (layer, head, position) order
    counts = torch.bincount(kept // w, minlength=window.shape[0] * window.shape[1]).view(window.shape)
    return _Kept(window.keys[kept], window.values[kept], window.start + kept % w, counts, window.scores[kept], w, overlap)


def _search(overlap_at: Callable[[float], float], ladder: tuple[float, ...], fidelity: float) -> tuple[float, float]:
    """(ratio, its overlap): the ladder step the check chose, trying at most two steps.

    The first try is the step at START_RATIO; its loss of overlap (1 - overlap, none at ratio 1)
    predicts where the loss meets 1 - `fidelity`, and the step there is tried next. Above the first
    step the loss is taken to grow with log(ratio) squared, below it with log(ratio): on the
    calibration passages (docs/kvzip.md) loss grows faster than linearly in log(ratio) past 4x, so a
    linear prediction upward mostly asks for a step that fails, while downward it finds one that
    passes. The largest ratio that passed wins; if none did, everything is kept.
    """
    if not ladder:
        return 1.0, 1.0
    first = max((r for r in ladder if r <= START_RATIO), default=ladder[-1])
    got = overlap_at(first)
    loss, allowed = 1 - got, 1 - fidelity
    if got >= fidelity:
        reach = math.log(first) * math.sqrt(allowed / loss) if loss > 0 else math.inf
        steps = [r for r in ladder if first < r and math.log(r) <= reach]
        best = (first, got)
    else:
        reach = math.log(first) * allowed / loss
        steps = [r for r in ladder if r < first and math.log(r) <= reach] or [r for r in ladder if r < first][:1]
        best = (1.0, 1.0)
    if steps:
        second = max(steps)
        got = overlap_at(second)
        if got >= fidelity:
            best = (second, got)
    return best


def _surprisal(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """-log p of each of `ids` after the ones before it (0 for the first, which has no logits here):
    `logits[i]` are the decoder's logits after ids[i], reading the text itself."""
    out = torch.zeros(len(ids))
    if len(ids) > 1:
        target = torch.tensor(ids[1:], device=logits.device)[:, None]
        out[1:] = -torch.log_softmax(logits[:len(ids) - 1].float(), dim=-1).gather(1, target)[:, 0].cpu()
    return out


def _probes(ids: list[int], surprisal: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Up to PROBES (cue, span) pairs in window order: the most surprising tokens that have a full cue
    before them and a full span from them, at least PROBE_SPAN + PROBE_CUE // 2 tokens apart, so the
    probes look up different parts of the window."""
    chosen: list[int] = []
    for t in sorted(range(PROBE_CUE, len(ids) - PROBE_SPAN + 1), key=lambda t: (-float(surprisal[t]), t)):
        if all(abs(t - u) >= PROBE_SPAN + PROBE_CUE // 2 for u in chosen):
            chosen.append(t)
            if len(chosen) == PROBES:
                break
    return [(ids[t - PROBE_CUE:t], ids[t:t + PROBE_SPAN]) for t in sorted(chosen)]


def _probe_overlap(reference: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """The mean over probes of each probe's mean sum_v min(p, q) over its span (1.0: identical)."""
    per_probe = [float(torch.minimum(a, b).sum(-1).mean()) for a, b in zip(reference, got, strict=True)]
    return sum(per_probe) / len(per_probe)


def _overlap(reference: torch.Tensor, got: torch.Tensor) -> float:
    """The lowest mean of sum_v min(p, q) over blocks of about CHECK_BLOCK_TOKENS positions (1.0: identical)."""
    per_position = torch.minimum(reference, got).sum(-1)
    blocks = torch.tensor_split(per_position, max(1, len(per_position) // CHECK_BLOCK_TOKENS))
    return float(min(block.mean() for block in blocks))


def _budget_metadata(parts: list[_Kept], config: KvzipConfig) -> dict[str, str]:
    """What a memory records of its budget: the ratio kept and, when adaptive, the check it passed."""
    layers_heads = parts[0].counts.numel()
    entries = sum(int(p.counts.sum()) for p in parts)
    out = {"kvzip_ratio": f"{sum(p.source_tokens for p in parts) * layers_heads / max(1, entries):.3f}"}
    if config.adaptive:
        out |= {"kvzip_fidelity": f"{min(p.overlap for p in parts):.4f}",
                "kvzip_fidelity_target": f"{config.target_fidelity:g}", "kvzip_check": CHECK}
    return out


def memory_budget(memory: Memory) -> dict[str, float | None]:
    """What a memory records of its budget: the ratio it keeps and, for adaptive kvzip memories, the
    overlap its check measured and the fidelity it had to reach (None where not recorded)."""
    meta = getattr(memory, "metadata", None) or {}

    def number(key: str) -> float | None:
        return float(meta[key]) if key in meta else None

    ratio = number("kvzip_ratio")
    return {"ratio": ratio if ratio is not None else round(memory.compression_ratio, 3),
            "fidelity": number("kvzip_fidelity"), "fidelity_target": number("kvzip_fidelity_target")}


def budget_summary(memories: Sequence[Memory]) -> dict[str, Any]:
    """The distribution of chosen ratios and measured fidelities over a corpus's memories."""
    if not memories:
        raise InvalidInputError("budget_summary needs at least one memory")
    budgets = [memory_budget(m) for m in memories]
    ratios = torch.tensor([b["ratio"] for b in budgets], dtype=torch.float64)
    source = sum(m.source_tokens for m in memories)
    out: dict[str, Any] = {
        "memories": len(memories), "source_tokens": source,
        # A corpus's ratio is its tokens per kept token-equivalent, not the mean of per-memory ratios.
        "ratio": round(source / sum(m.source_tokens / b["ratio"] for m, b in zip(memories, budgets, strict=True)), 3),
        "ratio_quantiles": {q: round(float(ratios.quantile(v)), 3) for q, v in
                            (("min", 0.0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1.0))},
        "ratio_counts": {f"{r:g}": n for r, n in sorted(Counter(round(b["ratio"], 1) for b in budgets).items())},
    }
    fidelities = [b["fidelity"] for b in budgets if b["fidelity"] is not None]
    if fidelities:
        out["fidelity"] = {"min": round(min(fidelities), 4), "mean": round(sum(fidelities) / len(fidelities), 4),
                           "checked": len(fidelities)}
    return out


def _join_windows(parts: list[_Kept], n_tokens: int, sha: str, storage: str, provenance: dict) -> KvMemory:
    """One memory from per-window entries, re-ordered by (layer, head, position)."""
    keys = torch.cat([p.keys for p in parts])
    values = torch.cat([p.values for p in parts])
    positions = torch.cat([p.positions for p in parts])
    owners = torch.cat([entry_owners(p.counts) for p in parts])
    return KvMemory.from_unordered(keys, values, positions, owners, tuple(parts[0].counts.shape), storage,
                                   pieces=(Piece(sha, 0, n_tokens, 0, n_tokens),),
                                   scores=torch.cat([p.scores for p in parts]), **provenance)
