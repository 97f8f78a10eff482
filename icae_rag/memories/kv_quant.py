"""Quantised storage of kvzip entries: int8 absmax codes, and int4 / int2 min/max codes packed into
bytes (KIVI's layouts).

Entries are ordered by layer, then KV head, then position; `counts` (layers, kv_heads) says how many
each head kept, and `entry_owners(counts)` each entry's flat (layer * kv_heads + head) index.

int8: keys per channel of each head, values per entry, symmetric absmax scales in float16; keys
keep their rotation.

int4 / int2: keys are stored before rotation (pre-RoPE) and quantised per channel over groups of `group`
consecutive entries of the same (layer, KV head): one fp16 scale and zero point per channel per
group. A head that keeps fewer than `SMALL_HEAD_ENTRIES` entries quantises its keys per entry
instead (like values): per-channel scales (4 bytes x head_dim) would outweigh its few codes.
Values are quantised per entry in groups of gcd(group, head_dim) channels. Codes are packed
8 / bits to a byte, first code in the low bits.
"""

from __future__ import annotations

import math

import torch

QUANT_BITS = {"int4": 4, "int2": 2}
# The tensors an int4 / int2 KvMemory holds in `quant`; "q_group" is int32 [bits, group size].
QUANT_TENSORS = ("q_group", "q_key_scale", "q_key_zero", "q_key_entry_scale", "q_key_entry_zero",
                 "q_value_scale", "q_value_zero")
# Heads keeping fewer entries than this quantise their keys per entry: a head's per-channel group
# costs head_dim x 4 bytes (256 for head_dim 64), more than 15 entries' per-entry scales (15 x 4).
SMALL_HEAD_ENTRIES = 16
_FP16_TINY = 2.0 ** -14  # smallest normal float16: no scale is stored below it


def entry_owners(counts: torch.Tensor) -> torch.Tensor:
    """For each entry, the flat (layer * kv_heads + head) index it belongs to."""
    flat = counts.reshape(-1).long().cpu()
    return torch.repeat_interleave(torch.arange(flat.numel()), flat)


def quantise_int8(keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float (N, D) keys and values to int8: (key codes, value codes, key scales (layers, kv_heads, D),
    value scales (N,)), scales in float16."""
    keys, values = keys.float(), values.float()
    owner = entry_owners(counts).to(keys.device)
    absmax = keys.new_zeros(counts.numel(), keys.shape[1]).index_reduce_(0, owner, keys.abs(), "amax")
    key_scale = (absmax / 127).clamp(min=1e-8)
    value_scale = (values.abs().amax(dim=1) / 127).clamp(min=1e-8)
    qk = torch.round(keys / key_scale[owner]).clamp(-127, 127).to(torch.int8)
    qv = torch.round(values / value_scale[:, None]).clamp(-127, 127).to(torch.int8)
    return qk, qv, key_scale.view(*counts.shape, -1).half(), value_scale.half()


def dequantise_int8(keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor, key_scale: torch.Tensor,
                    value_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `quantise_int8`: float32 (keys, values) on the codes' device."""
    owner = entry_owners(counts).to(keys.device)
    keys = keys.float() * key_scale.float().reshape(-1, keys.shape[1])[owner]
    return keys, values.float() * value_scale.float()[:, None]


def minmax_scale(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) in float16 for codes spanning [lo, hi]: zero + scale x (2**bits - 1) reaches hi."""
    zero = lo.half()
    scale = ((hi - zero.float()) / ((1 << bits) - 1)).clamp(min=_FP16_TINY)
    return (scale * (1 + 2.0 ** -9)).half(), zero  # rounded up to float16


def encode(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes of `x` with the (broadcast) float16 scale and zero a reader de-quantises with: every
    element of the group's [lo, hi] comes back within scale / 2 (plus float16 rounding of the zero)."""
    return torch.round((x - zero.float()) / scale.float()).clamp(0, (1 << bits) - 1).to(torch.uint8)


def value_group(group: int, head_dim: int) -> int:
    """Channels per value group: gcd(group, head_dim) (the whole head for group >= head_dim)."""
    return math.gcd(group, head_dim)


def quantise_values(values: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per entry, groups of channels: (codes (N, D), scale (N, D / g), zero (N, D / g))."""
    n, dim = values.shape
    g = value_group(group, dim)
    grouped = values.float().reshape(n, dim // g, g)
    scale, zero = minmax_scale(grouped.amin(-1), grouped.amax(-1), bits)
    return encode(grouped, scale[..., None], zero[..., None], bits).reshape(n, dim), scale, zero


def dequantise_values(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Float32 (N, D) from per-entry group codes."""
    n, dim = codes.shape
    groups = scale.shape[1]
    x = codes.float().reshape(n, groups, dim // max(1, groups)) * scale.float()[..., None] + zero.float()[..., None]
    return x.reshape(n, dim)


def key_groups(counts: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For each entry: its per-channel group index (-1 for entries of small heads, quantised per
    entry), whether it is such a small-head entry, and the number of per-channel groups."""
    flat = counts.reshape(-1).long().cpu()
    owner = entry_owners(counts)
    rank = torch.arange(owner.numel()) - (flat.cumsum(0) - flat)[owner]
    small_head = flat < SMALL_HEAD_ENTRIES
    per_head = torch.where(small_head, 0, (flat + group - 1) // group)
    first = per_head.cumsum(0) - per_head
    small = small_head[owner]
    index = torch.where(small, -1, first[owner] + rank // group)
    return index, small, int(per_head.sum())


def quantise_keys(keys: torch.Tensor, counts: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    """Pre-RoPE keys (N, D), ordered by (layer, head, position), to codes and scales (see module doc)."""
    keys = keys.float()
    index, small, groups = key_groups(counts, group)
    big = ~small
    codes = torch.empty(keys.shape, dtype=torch.uint8)
    x, idx = keys[big], index[big]
    dim = keys.shape[1]
    lo = torch.full((groups, dim), math.inf).index_reduce_(0, idx, x, "amin", include_self=True)
    hi = torch.full((groups, dim), -math.inf).index_reduce_(0, idx, x, "amax", include_self=True)
    group_scale, group_zero = minmax_scale(lo, hi, bits)
    codes[big] = encode(x, group_scale[idx], group_zero[idx], bits)
    codes[small], entry_scale, entry_zero = quantise_values(keys[small], bits, group)
    return {"codes": codes, "key_scale": group_scale, "key_zero": group_zero,
            "key_entry_scale": entry_scale, "key_entry_zero": entry_zero}


def dequantise_keys(codes: torch.Tensor, counts: torch.Tensor, group: int, scale: torch.Tensor, zero: torch.Tensor,
                    entry_scale: torch.Tensor, entry_zero: torch.Tensor) -> torch.Tensor:
    """Float32 pre-RoPE keys (N, D) from `quantise_keys`'s tensors."""
    index, small, _ = key_groups(counts, group)
    index, small = index.to(codes.device), small.to(codes.device)
    out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
    big = ~small
    idx = index[big]
    out[big] = codes[big].float() * scale.float()[idx] + zero.float()[idx]
    out[small] = dequantise_values(codes[small], entry_scale, entry_zero)
    return out


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, D) codes < 2**bits to (N, ceil(D * bits / 8)) uint8, 8 / bits codes a byte."""
    per = 8 // bits
    n, dim = codes.shape
    padded = torch.zeros(n, -(-dim // per) * per, dtype=torch.uint8, device=codes.device)
    padded[:, :dim] = codes
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (padded.view(n, -1, per) << shifts).sum(-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of `pack`: (N, dim) uint8 codes."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)[:, :dim]


def positions_bitmap(positions: torch.Tensor, counts: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """(layers x kv_heads, ceil(n_tokens / 8)) uint8: bit p of row h is set when head h kept position p."""
    rows = counts.numel()
    owner = entry_owners(counts)
    bits = torch.zeros(rows, -(-n_tokens // 8) * 8, dtype=torch.uint8)
    bits[owner, positions.long().cpu()] = 1
    return pack(bits, 1)


def bitmap_positions(bitmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `positions_bitmap`: (positions in (head, position) order, entries per head row)."""
    bits = unpack(bitmap, 1, bitmap.shape[1] * 8)
    rows, cols = bits.nonzero(as_tuple=True)
    return cols, torch.bincount(rows, minlength=bitmap.shape[0])
