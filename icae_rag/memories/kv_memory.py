"""`KvMemory`: the kept keys and values of a passage in every (layer, KV head), read by the decoder as its cache.

Entries are stored flat, ordered by layer, then KV head, then position: `keys`/`values` are
(entries, head_dim), `positions` (entries,) the token index inside the passage, `counts` (layers,
kv_heads) how many entries each head kept. Keys carry their rotary rotation for position
`prefix_tokens + position`, i.e. as computed right after the prompt prefix (`prefix_sha256`); a
reader re-rotates them to wherever the passage stands in its prompt. Storage is float16 (default),
float32, or int8 (keys per channel of each head, values per entry, absmax scales: KIVI's layout), or
int4 / int2: keys stored before rotation, codes packed into bytes, per-group fp16 scales and zero
points (see `kv_quant`); a reader de-quantises and rotates them to its own positions in one step.
Their positions are int16 (int32 from 32,768 tokens), written as a per-head bitmap when smaller.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import InvalidInputError
from . import kv_file, kv_quant
from .base import Memory
from .kv_quant import QUANT_TENSORS, entry_owners
from .soft_prompt import Piece

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "int8": torch.int8,
                  "int4": torch.uint8, "int2": torch.uint8}  # int4 / int2: packed codes


@dataclass
class KvMemory(Memory):
    """Kept (layer, KV head, position) entries of one passage, with provenance and prefix."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    counts: torch.Tensor
    pieces: tuple[Piece, ...]
    prefix_tokens: int
    prefix_sha256: str
    compressor: str
    compressor_version: str
    backbone: str
    key_scale: torch.Tensor | None = None
    value_scale: torch.Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    scores: torch.Tensor | None = None  # (entries,) float16: how much the decoder needed each entry
    # int4 / int2: QUANT_TENSORS by name; "q_group" is int32 [bits, group size]
    quant: dict[str, torch.Tensor] | None = None
    format_name = "kv"
    readable_by_any_compressor = True

    def __post_init__(self) -> None:
        # A piece's context positions in a KV memory are the passage positions its entries may carry:
        # its source tokens, counted on from the previous piece's. Set here rather than trusted, since
        # writers before 0.2 gave them no meaning (a budget check wrote (0, 1)); saved kvzip memories
        # already hold these values, so no file changes.
        start, pieces = 0, []
        for p in self.pieces:
            pieces.append(replace(p, position_start=start, position_end=start + p.source_tokens))
            start += p.source_tokens
        self.pieces = tuple(pieces)
        n = self.keys.shape[0]
        problems = []
        if self.counts.dim() != 2:
            problems.append(f"counts must be (layers, kv_heads), got shape {tuple(self.counts.shape)}")
        elif int(self.counts.sum()) != n:
            problems.append(f"counts sum to {int(self.counts.sum())} but there are {n} keys")
        if self.values.shape != self.keys.shape or self.positions.shape != (n,):
            problems.append(f"keys {tuple(self.keys.shape)}, values {tuple(self.values.shape)} and "
                            f"positions {tuple(self.positions.shape)} disagree")
        if n and (int(self.positions.min()) < 0 or int(self.positions.max()) >= self.source_tokens):
            problems.append(f"positions fall outside the passage's {self.source_tokens} tokens")
        if self.scores is not None and self.scores.shape != (n,):
            problems.append(f"scores {tuple(self.scores.shape)} do not match {n} entries")
        if (self.keys.dtype == torch.int8) != (self.key_scale is not None and self.value_scale is not None):
            problems.append("int8 entries need key_scale and value_scale, other dtypes none")
        if (self.keys.dtype == torch.uint8) != (self.quant is not None):
            problems.append("int4 / int2 entries need their quantisation tensors, other dtypes none")
        elif self.quant is not None and (sorted(self.quant) != sorted(QUANT_TENSORS)
                                         or self.quant["q_group"].shape != (2,)
                                         or int(self.quant["q_group"][0]) not in kv_quant.QUANT_BITS.values()):
            problems.append("int4 / int2 quantisation tensors are incomplete")
        elif self.quant is not None:
            problems += self._quant_problems()
        if problems:
            raise InvalidInputError("inconsistent KvMemory: " + "; ".join(problems))

    def _quant_problems(self) -> list[str]:
        q, n = self.quant, self.keys.shape[0]
        bits, group = (int(x) for x in q["q_group"])
        if group < 1 or q["q_key_scale"].dim() != 2:
            return [f"int{bits} group {group} or key scales {tuple(q['q_key_scale'].shape)} are malformed"]
        dim = q["q_key_scale"].shape[1]
        _, small, groups = kv_quant.key_groups(self.counts, group)
        value_groups = dim // kv_quant.value_group(group, dim) if dim else 0
        want = {"q_key_scale": (groups, dim), "q_key_zero": (groups, dim),
                "q_key_entry_scale": (int(small.sum()), value_groups),
                "q_key_entry_zero": (int(small.sum()), value_groups),
                "q_value_scale": (n, value_groups), "q_value_zero": (n, value_groups)}
        problems = [f"{k} is {tuple(q[k].shape)}, expected {v}" for k, v in want.items() if tuple(q[k].shape) != v]
        if self.keys.dim() != 2 or self.keys.shape[1] != -(-dim * bits // 8):
            problems.append(f"int{bits} codes {tuple(self.keys.shape)} do not hold {dim} channels")
        return problems

    # --- sizes ----------------------------------------------------------------------------------
    @property
    def layers(self) -> int:
        """Decoder layers the entries span."""
        return self.counts.shape[0]

    @property
    def kv_heads(self) -> int:
        """KV heads per layer."""
        return self.counts.shape[1]

    @property
    def kept_entries(self) -> int:
        """Kept (layer, head, position) entries."""
        return self.keys.shape[0]

    @property
    def num_positions(self) -> int:
        """Kept entries in token-equivalents: entries / (layers * kv_heads), rounded up."""
        return math.ceil(self.kept_entries / (self.layers * self.kv_heads))

    @property
    def compression_ratio(self) -> float:
        """Passage entries (tokens x layers x heads) per kept entry."""
        return self.source_tokens * self.layers * self.kv_heads / max(1, self.kept_entries)

    @property
    def storage(self) -> str:
        """"float16", "float32", "int8", "int4" or "int2"."""
        if self.quant is not None:
            return f"int{int(self.quant['q_group'][0])}"
        return next(k for k, v in STORAGE_DTYPES.items() if v == self.keys.dtype and k not in kv_quant.QUANT_BITS)

    def nbytes(self) -> int:
        """Bytes of every stored tensor (what a file holds, header aside)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    # --- building and reading -------------------------------------------------------------------
    @classmethod
    def from_entries(cls, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                     counts: torch.Tensor, storage: str, *, quant_group: int = 128,
                     rotary_emb: torch.nn.Module | None = None, **provenance: Any) -> KvMemory:
        """Store float entries (ordered by layer, head, position; keys rotated for `prefix_tokens +
        position`) as `storage`. int4 / int2 un-rotate the keys with the decoder's `rotary_emb` and
        quantise in groups of `quant_group` (see `kv_quant`)."""
        if storage not in STORAGE_DTYPES:
            raise InvalidInputError(f"unknown KV storage {storage!r}: use one of {sorted(STORAGE_DTYPES)}")
        if provenance.get("scores") is not None:
            provenance["scores"] = provenance["scores"].detach().to("cpu", torch.float16)
        if storage in kv_quant.QUANT_BITS:
            from ..models.kv_attention import rotate_each

            if rotary_emb is None:
                raise InvalidInputError(f"{storage} KV storage needs the decoder's rotary embedding")
            back = -(positions.to(keys.device).long() + int(provenance["prefix_tokens"]))
            plain = rotate_each(keys, back, rotary_emb).cpu()
            return cls._quantised(plain, values.float().cpu(), positions, counts.to(torch.int32).cpu(),
                                  kv_quant.QUANT_BITS[storage], quant_group, **provenance)
        keys, values = keys.float().cpu(), values.float().cpu()
        positions, counts = positions.to(torch.int32).cpu(), counts.to(torch.int32).cpu()
        if storage != "int8":
            dtype = STORAGE_DTYPES[storage]
            return cls(keys.to(dtype), values.to(dtype), positions, counts, **provenance)
        qk, qv, key_scale, value_scale = kv_quant.quantise_int8(keys, values, counts)
        return cls(qk, qv, positions, counts, key_scale=key_scale, value_scale=value_scale, **provenance)

    @classmethod
    def from_unordered(cls, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, owners: torch.Tensor,
                       shape: tuple[int, int], storage: str, **kwargs: Any) -> KvMemory:
        """`from_entries` for entries in any order, each with its owner (layer * kv_heads + head) in a
        (layers, kv_heads) `shape`; a `scores` keyword is reordered with them."""
        positions = positions.to(keys.device)
        span = int(positions.max()) + 1 if positions.numel() else 1
        order = torch.argsort(owners.to(keys.device) * span + positions, stable=True)
        counts = torch.bincount(owners.to(keys.device), minlength=shape[0] * shape[1]).view(shape)
        if kwargs.get("scores") is not None:
            kwargs["scores"] = kwargs["scores"].to(keys.device)[order]
        return cls.from_entries(keys[order], values[order], positions[order], counts, storage, **kwargs)

    @classmethod
    def _quantised(cls, plain_keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                   counts: torch.Tensor, bits: int, group: int, **provenance: Any) -> KvMemory:
        """An int4 / int2 memory of pre-RoPE float keys and values."""
        n_tokens = sum(p.source_tokens for p in provenance["pieces"])
        positions = positions.cpu().to(torch.int16 if n_tokens < 32768 else torch.int32)
        k = kv_quant.quantise_keys(plain_keys, counts, bits, group)
        v_codes, v_scale, v_zero = kv_quant.quantise_values(values, bits, group)
        quant = {"q_group": torch.tensor([bits, group], dtype=torch.int32), "q_key_scale": k["key_scale"],
                 "q_key_zero": k["key_zero"], "q_key_entry_scale": k["key_entry_scale"],
                 "q_key_entry_zero": k["key_entry_zero"], "q_value_scale": v_scale, "q_value_zero": v_zero}
        return cls(kv_quant.pack(k["codes"], bits), kv_quant.pack(v_codes, bits), positions, counts,
                   quant=quant, **provenance)

    def dequantised(self) -> tuple[torch.Tensor, torch.Tensor]:
        """int4 / int2: (keys before rotation, values) as float32."""
        if self.quant is None:
            raise InvalidInputError(f"a {self.storage} KV memory is not quantised to int4 / int2")
        q = self.quant
        bits, group = (int(x) for x in q["q_group"])
        dim = q["q_key_scale"].shape[1]
        keys = kv_quant.dequantise_keys(kv_quant.unpack(self.keys, bits, dim), self.counts, group, q["q_key_scale"],
                                        q["q_key_zero"], q["q_key_entry_scale"], q["q_key_entry_zero"])
        values = kv_quant.dequantise_values(kv_quant.unpack(self.values, bits, dim), q["q_value_scale"],
                                            q["q_value_zero"])
        return keys, values

    def _rotated_entries(self, delta: int, rotary_emb: torch.nn.Module | None, device: torch.device | str
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (keys rotated for prefix_tokens + delta + position, values) on `device`."""
        from ..models.kv_attention import rerotate, rotate_each

        if self.quant is None:
            keys, values = self.float_entries()
            return rerotate(keys.to(device), delta, rotary_emb) if delta else keys.to(device), values.to(device)
        if rotary_emb is None:
            raise InvalidInputError(f"reading a {self.storage} KV memory needs the decoder's rotary embedding")
        keys, values = self.to(device).dequantised()
        return rotate_each(keys, self.positions.to(device).long() + (self.prefix_tokens + delta), rotary_emb), values

    def float_entries(self, rotary_emb: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) as float32, de-quantised if stored as int8 / int4 / int2 (those need the
        decoder's `rotary_emb`: their keys are stored before rotation)."""
        if self.quant is not None:
            return self._rotated_entries(0, rotary_emb, self.keys.device)
        if self.key_scale is None:
            return self.keys.float(), self.values.float()
        return kv_quant.dequantise_int8(self.keys, self.values, self.counts, self.key_scale, self.value_scale)

    def cache_tensors(self, delta: int, rotary_emb: torch.nn.Module, dtype: torch.dtype, device: torch.device
                      ) -> CacheColumns:
        """Per layer: keys, values (kv_heads, columns, head_dim), valid and rotary positions (kv_heads,
        columns), keys moved `delta` positions.

        Each head's entries fill its first columns; a layer is as wide as its fullest head and
        `valid` marks which columns each head really kept.
        """
        keys, values = self._rotated_entries(delta, rotary_emb, device)  # int4 / int2: one rotation
        keys, values = keys.to(dtype), values.to(dtype)
        positions = self.positions.to(device).long() + (self.prefix_tokens + delta)
        owner, rank = self.entry_columns(device)
        dim, out = keys.shape[1], CacheColumns([], [], [], [])
        bounds = [0, *self.counts.sum(1).long().cumsum(0).tolist()]
        for layer in range(self.layers):
            lo, hi = bounds[layer], bounds[layer + 1]
            at = (owner[lo:hi] - layer * self.kv_heads, rank[lo:hi])
            width = int(self.counts[layer].max())
            k = keys.new_zeros(self.kv_heads, width, dim)
            v = values.new_zeros(self.kv_heads, width, dim)
            ok = torch.zeros(self.kv_heads, width, dtype=torch.bool, device=device)
            pos = torch.zeros(self.kv_heads, width, dtype=torch.long, device=device)
            k[at], v[at], ok[at], pos[at] = keys[lo:hi], values[lo:hi], True, positions[lo:hi]
            for column, tensor in zip(out, (k, v, ok, pos), strict=True):
                column.append(tensor)
        return out

    def entry_columns(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per entry, its (layer * kv_heads + head) and its column in that head's part of the cache
        (`cache_tensors` fills each head's first columns with its entries, in order)."""
        flat = self.counts.reshape(-1).long().to(device)
        owner = entry_owners(self.counts).to(device)
        return owner, torch.arange(self.kept_entries, device=device) - (flat.cumsum(0) - flat)[owner]

    def pruned(self, entries: int) -> KvMemory:
        """A copy keeping the `entries` highest-scored entries (needs the scores kvzip stores)."""
        if self.scores is None:
            raise InvalidInputError("this KV memory has no scores to prune by: compress the text again")
        if not 0 <= entries <= self.kept_entries:
            raise InvalidInputError(f"can keep 0 to {self.kept_entries} entries of this memory, not {entries}")
        return self.select(self.scores.float().topk(entries).indices.sort().values)

    def select(self, kept: torch.Tensor) -> KvMemory:
        """A copy with the entries at the sorted indices `kept` (order by layer, head, position is kept).

        int4 / int2 keys are re-quantised over the copy's groups (values keep their codes)."""
        from dataclasses import replace

        if kept.numel() == self.kept_entries:
            return self
        counts = torch.bincount(entry_owners(self.counts)[kept], minlength=self.counts.numel()).view(self.counts.shape)
        if self.quant is not None:
            keys, values = self.dequantised()
            bits, group = (int(x) for x in self.quant["q_group"])
            provenance = {f.name: getattr(self, f.name) for f in fields(self)
                          if f.name not in ("keys", "values", "positions", "counts", "quant", "scores")}
            return type(self)._quantised(keys[kept], values[kept], self.positions[kept], counts.to(torch.int32),
                                         bits, group, scores=None if self.scores is None else self.scores[kept],
                                         **provenance)
        return replace(self, keys=self.keys[kept], values=self.values[kept], positions=self.positions[kept],
                       counts=counts.to(torch.int32), scores=None if self.scores is None else self.scores[kept],
                       value_scale=None if self.value_scale is None else self.value_scale[kept])

    # --- files (the format lives in kv_file) ---------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the memory stores, by name (what its file holds)."""
        return kv_file.file_tensors(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write as one safetensors file; provenance and a checksum of the tensors go in its header."""
        kv_file.save(self, path)

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], header: dict[str, Any], path: Path,
                  device: str | torch.device) -> KvMemory:
        """Build a KV memory from a file's tensors and header; edits and inconsistencies raise."""
        return kv_file.read(cls, tensors, header, path, device)

    def to(self, device: str | torch.device) -> KvMemory:
        """A copy whose tensors live on `device` (storage dtype unchanged)."""
        from dataclasses import replace

        names = ("keys", "values", "positions", "counts", "key_scale", "value_scale", "scores")
        moved = {k: getattr(self, k).to(device) for k in names if getattr(self, k) is not None}
        if self.quant is not None:
            moved["quant"] = {k: t.to(device) for k, t in self.quant.items()}
        return replace(self, **moved)


def prune_jointly(memories: list[KvMemory], entries: int, weights: list[float] | None = None,
                  scores: list[torch.Tensor] | None = None) -> list[KvMemory]:
    """Keep `entries` entries over all `memories` together: the highest (weighted) scores win, so the
    memory the decoder needs most keeps most (one budget over several passages). `scores`, one per
    memory in entry order, replace the scores the memories store (a question's, say)."""
    weights = weights or [1.0] * len(memories)
    if scores is None and any(m.scores is None for m in memories):
        raise InvalidInputError("joint pruning needs KV memories with scores: compress the texts again")
    total = sum(m.kept_entries for m in memories)
    if entries >= total:
        return list(memories)
    scores = scores if scores is not None else [m.scores for m in memories]
    flat = torch.cat([s.float().cpu() * w for s, w in zip(scores, weights, strict=True)])
    chosen = flat.topk(max(0, entries)).indices.sort().values
    bounds = [0, *torch.tensor([m.kept_entries for m in memories]).cumsum(0).tolist()]
    return [m.select(chosen[(chosen >= lo) & (chosen < hi)] - lo)
            for m, lo, hi in zip(memories, bounds, bounds[1:], strict=False)]


def token_ids_sha256(ids: list[int]) -> str:
    """Hex SHA-256 of a token id sequence: how a memory names the prompt prefix it follows."""
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


class CacheColumns(NamedTuple):
    """A memory laid out as cache columns, per layer: keys, values (kv_heads, columns, head_dim),
    valid and rotary positions (kv_heads, columns)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: list[torch.Tensor]
    positions: list[torch.Tensor]

