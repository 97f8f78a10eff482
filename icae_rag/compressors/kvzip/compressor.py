"""`KvzipCompressor`: a passage's windows, leads and batches, the prompt prefix's cache, and the
version; the scoring passes are in `scoring`, the adaptive budget's check in `check`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from tqdm.auto import tqdm

from ...decoding import build_prompt, context_prefix_ids, prompt_texts
from ...decoding.prefill import _RowCache
from ...decoding.selection import question_choice
from ...errors import InvalidInputError
from ...memories.kv_memory import KvMemory, entry_owners, prune_jointly, token_ids_sha256
from ...memories.soft_prompt import Piece, text_sha256
from ...models import kv_attention
from ...models.backbones import DecoderBackbone
from ...models.hf_compat import output_cache
from ..base import Compressor
from .check import _checked_ratio
from .config import CHECK, WINDOWS, KvzipConfig
from .reports import _budget_metadata
from .scoring import _apart_groups, _keep_top, _Kept, _score_rows, _score_window, _Window


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
        # quant_group outside int4 / int2, the adaptive settings in fixed mode, read_ratio (it prunes at
        # read time): memories are shared by every read budget. The default stores what
        # keep_fraction=1.0 stores, under the same version.
        unused = {"decoder", "read_ratio"} | ({"quant_group"} if config.storage not in ("int4", "int2") else set()) | (
            set() if config.adaptive else {"fidelity", "max_ratio"})
        settings = {k: v for k, v in asdict(config).items() if k not in unused}
        if not config.adaptive and config.ratio is None:
            settings["keep_fraction"] = config.keep
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

    def prefix_row(self) -> _RowCache:
        """The prompt prefix's cache as a prefill row: answers reuse it instead of running it again."""
        return _RowCache.of_text(self._prefix_cache())

    def read_entries(self, contexts: Sequence[Any]) -> int | None:
        """The entries of the KV memories among `contexts` a question's answer reads: 1/`read_at` of
        their passages' entries, one budget over them all; None when read as stored."""
        memories = [c for c in contexts if isinstance(c, KvMemory)]
        read = self.config.read_at
        if read is None or not memories:
            return None
        entries = round(sum(m.source_tokens * m.layers * m.kv_heads for m in memories) / read)
        if entries >= sum(m.kept_entries for m in memories):
            return None
        if any(m.scores is None for m in memories):
            raise InvalidInputError("reading memories at a budget needs the scores kvzip stores with them: "
                                    "compress the texts again")
        return entries

    def budget_contexts(self, contexts: Sequence[Any], question: str | None = None) -> list[Any]:
        """The KV memories among `contexts` cut together to `read_entries`: for a question, the
        entries its answer reads (`selection.question_choice`, mostly by the question's attention);
        without one (the repeat prompt), by their stored scores. Unchanged when read as stored."""
        entries = self.read_entries(contexts)
        if entries is None:
            return list(contexts)
        memories = [c for c in contexts if isinstance(c, KvMemory)]
        if question is None:
            pruned = iter(prune_jointly(memories, entries))
        else:
            prompt = build_prompt(self, contexts, mode="answer", question=question)
            pruned = iter(m.select(keep.nonzero().squeeze(1)) for m, keep in zip(
                memories, question_choice(self, prompt), strict=True))
        return [next(pruned) if isinstance(c, KvMemory) else c for c in contexts]

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.decoder.device)

    def _score_rows(self, windows: list[list[int]], repeat_ids: list[int]) -> list[_Window]:
        """Short passages encoded apart, scored together (`scoring._score_rows`)."""
        return _score_rows(self.decoder, self._prefix_cache(), windows, repeat_ids, self.config.adaptive)

    def _score_window(self, lead: list[int], window: list[int], start: int, shift: int, cache,
                      repeat_ids: list[int]) -> tuple[_Window, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One window of a passage, after its lead (`scoring._score_window`)."""
        return _score_window(self.decoder, self._prefix_cache(), lead, window, start, shift, cache, repeat_ids,
                             self.config.adaptive, self.config.lead_tokens)

    def _choose(self, window: _Window, sha: str, provenance: dict, prefix_row: _RowCache) -> _Kept:
        """The window's kept entries: a fixed share, or the smallest ladder step that passes the check."""
        n_layers, n_heads = window.shape
        total = len(window.ids) * n_layers * n_heads
        if not self.config.adaptive:
            return _keep_top(window, max(1, round(total * self.config.keep)), None)
        ratio, overlap = _checked_ratio(self, window, sha, provenance, prefix_row)
        return _keep_top(window, max(1, round(total / ratio)), overlap)


def _join_windows(parts: list[_Kept], n_tokens: int, sha: str, storage: str, provenance: dict) -> KvMemory:
    """One memory from per-window entries, re-ordered by (layer, head, position)."""
    keys = torch.cat([p.keys for p in parts])
    values = torch.cat([p.values for p in parts])
    positions = torch.cat([p.positions for p in parts])
    owners = torch.cat([entry_owners(p.counts) for p in parts])
    return KvMemory.from_unordered(keys, values, positions, owners, tuple(parts[0].counts.shape), storage,
                                   pieces=(Piece(sha, 0, n_tokens, 0, n_tokens),),
                                   scores=torch.cat([p.scores for p in parts]), **provenance)
