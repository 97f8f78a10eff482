"""Attention over caches that hold kept KV entries: per-(layer, head) masks, scores, re-rotation.

A kvzip memory keeps a different set of positions in every (layer, KV head). Laid into the decoder's
cache, a memory takes as many columns as its fullest head, and each head masks the columns it did
not keep. Hugging Face passes one attention mask to all layers, so the per-layer part travels as a
keyword argument (`kv_view`) that the attention function registered here reads. The same function
records, when asked, the largest attention each cached entry receives: that is how kvzip scores
entries. Without `kv_view` it is exactly the model's SDPA attention.

Supported decoders: rotary-position causal LMs whose rotary embedding is `rotate_half` style and
shared by all layers, with full (not sliding-window) attention: the Llama, Qwen2/3, Mistral (no
sliding window) and Gemma families.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UnsupportedModelError

ATTENTION_NAME = "icae_rag_kv"
# Decoder types whose attention, rotary and cache layout this module was written against.
ROTARY_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma")


@dataclass
class KvView:
    """What the attention function needs beyond HF's mask: per-layer column validity and positions,
    score recording.

    `valid[l]` is (batch, kv_heads, columns) bool for the first `columns` cache columns of layer l
    (left padding included, as False): it replaces HF's mask, because layers differ in width. Columns
    after those (text appended later) are read causally by every head. With `query_positions`
    (batch, queries), `valid` covers every column, the forward's own included, and `positions[l]`
    (batch, kv_heads, columns) holds each column's rotary position: a query reads the valid columns
    at or before its position, so a cache's columns need not be in position order. With `record`,
    `scores[l]` becomes (batch, kv_heads, keys): the max attention weight each key got from any query
    and any query head of its group; `score_columns` limits it to those keys (the rest cost nothing).
    """

    valid: list[torch.Tensor] | None = None
    positions: list[torch.Tensor] | None = None
    query_positions: torch.Tensor | None = None
    record: bool = False
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    score_columns: tuple[int, int] | None = None  # with record: score only columns [start, end)

    def __post_init__(self) -> None:
        if (self.query_positions is None) != (self.positions is None) or (
                self.positions is not None and self.valid is None):
            raise ValueError("KvView: positions and query_positions go together, with valid")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why kvzip memories cannot be used with this decoder, or None if they can."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in ROTARY_MODEL_TYPES:
        return (f"decoder type {model_type!r} is not a supported rotary-position decoder "
                f"(supported: {', '.join(ROTARY_MODEL_TYPES)})")
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if base is None or not hasattr(base, "rotary_emb"):
        return f"decoder type {model_type!r} has no shared rotary embedding"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return f"decoder type {model_type!r} uses sliding-window attention (sliding_window={config.sliding_window})"
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or ())):
        return f"decoder type {model_type!r} mixes attention types per layer ({set(config.layer_types)})"
    if getattr(config, "attn_logit_softcapping", None):
        return f"decoder type {model_type!r} soft-caps attention logits"
    return None


def enable(model: nn.Module) -> bool:
    """Route the decoder's attention through this module's function; False if unsupported."""
    if unsupported_reason(model) is not None:
        return False
    _register()
    model.config._attn_implementation = ATTENTION_NAME
    return True


def require(model: nn.Module) -> None:
    """Raise UnsupportedModelError unless the decoder can read and make kvzip memories."""
    reason = unsupported_reason(model)
    if reason is None and model.config._attn_implementation != ATTENTION_NAME:
        reason = "its attention was not routed through icae_rag (load it with icae_rag.load_decoder)"
    if reason is not None:
        raise UnsupportedModelError(f"kvzip memories need a rotary-position decoder with full attention: {reason}; "
                                    "use the icae, e2llm or raw compressor with this decoder")


def rotary(model: nn.Module) -> nn.Module:
    """The decoder's shared rotary embedding module."""
    return getattr(model, model.base_model_prefix).rotary_emb


def rerotate(keys: torch.Tensor, delta: int, rotary_emb: nn.Module) -> torch.Tensor:
    """Keys (..., T, head_dim) rotated by `delta` more positions: equal to computing them `delta` later.

    RoPE rotations compose, so a post-RoPE key at position p rotated by delta is the key at p + delta.
    """
    if delta == 0:
        return keys
    pos = torch.tensor([[abs(delta)]], device=keys.device)
    cos, sin = rotary_emb(keys.float(), pos)
    scale = float(getattr(rotary_emb, "attention_scaling", 1.0))
    cos, sin = cos[0, 0] / scale, sin[0, 0] / scale * (1 if delta > 0 else -1)
    k = keys.float()
    return (k * cos + _rotate_half(k) * sin).to(keys.dtype)


def rotate_each(keys: torch.Tensor, positions: torch.Tensor, rotary_emb: nn.Module,
                chunk: int = 65536) -> torch.Tensor:
    """Keys (N, head_dim), row i rotated by `positions[i]` positions (negative: back), as float32.

    Un-rotating post-RoPE keys by their own positions gives pre-RoPE keys; rotating those by a new
    absolute position gives the keys computed there (rotations compose, as in `rerotate`).
    """
    out = torch.empty(keys.shape, dtype=torch.float32, device=keys.device)
    scale = float(getattr(rotary_emb, "attention_scaling", 1.0))
    for lo in range(0, keys.shape[0], chunk):
        k, pos = keys[lo:lo + chunk].float(), positions[lo:lo + chunk].to(keys.device).long()
        cos, sin = rotary_emb(k, pos.abs()[None])
        sign = torch.where(pos < 0, -1.0, 1.0).to(k.device)[:, None]
        out[lo:lo + chunk] = k * (cos[0].float() / scale) + _rotate_half(k) * (sin[0].float() / scale * sign)
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               kv_view: KvView | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kv_view is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, q_heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = q_heads // kv_heads
    layer = module.layer_idx
    if kv_view.valid is None:
        allowed = _allowed(attention_mask, q_len, k_len, query.device)  # (b or 1, 1, q, k)
    elif kv_view.query_positions is not None:
        valid, positions = kv_view.valid[layer], kv_view.positions[layer]
        if valid.shape[2] != k_len:
            raise ValueError(f"KvView covers {valid.shape[2]} columns of layer {layer}, the cache has {k_len}")
        allowed = valid[:, :, None, :] & (positions[:, :, None, :] <= kv_view.query_positions[:, None, :, None])
    else:
        valid = kv_view.valid[layer]
        allowed = _allowed(None, q_len, k_len, query.device) & torch.cat(
            [valid, valid.new_ones(*valid.shape[:2], k_len - valid.shape[2])], dim=2)[:, :, None, :]
    scale = scaling if scaling is not None else head_dim ** -0.5
    if kv_view.record and not _has_lse_kernel(query):
        return _eager(query, key, value, allowed, scale, kv_view, layer)
    # Query heads sharing a KV head are one batch entry (b * kv_heads, groups, ...): keys, values and
    # the per-KV-head mask are broadcast to the group's query heads, never copied per query head.
    q = query.reshape(b * kv_heads, groups, q_len, head_dim)
    k = key.reshape(b * kv_heads, 1, k_len, head_dim).expand(-1, groups, -1, -1)
    v = value.reshape(b * kv_heads, 1, k_len, head_dim).expand(-1, groups, -1, -1)
    cached = k_len - q_len
    # One unpadded sequence after its cache reads every cached column and its own block causally.
    plain_causal = kv_view.valid is None and b == 1 and torch.equal(allowed, _allowed(None, q_len, k_len, query.device))
    if not kv_view.record:
        causal = plain_causal and cached == 0
        mask = None if causal else _per_group(allowed, b, kv_heads)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=causal)
        return out.view(b, q_heads, q_len, head_dim).transpose(1, 2).contiguous(), None
    if plain_causal:
        # Two kernel calls (no mask to build or apply) merged by their logsumexps.
        head, head_lse = _flash_lse(q, k[:, :, :cached], v[:, :, :cached], None, scale)
        own, own_lse = _flash_lse(q, k[:, :, cached:], v[:, :, cached:], None, scale, causal=True)
        lse = torch.logaddexp(head_lse, own_lse)
        out = head * torch.exp(head_lse - lse)[..., None] + own * torch.exp(own_lse - lse)[..., None]
        out = out.to(query.dtype)
    else:
        mask = _per_group(allowed, b, kv_heads)
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
        out, lse = _flash_lse(q, k, v, bias, scale)
    # A key's score is its largest softmax weight, exp(logit - logsumexp of the query's row), so only
    # the scored columns' logits are computed; the kernel gave each row's logsumexp.
    lo, hi = kv_view.score_columns or (0, k_len)
    logits = torch.matmul(query.reshape(b, kv_heads, groups * q_len, head_dim).float() * scale,
                          key[:, :, lo:hi].float().transpose(-1, -2))
    weights = logits.sub_(lse.reshape(b, kv_heads, groups * q_len, 1)).exp_().view(b, kv_heads, groups, q_len, hi - lo)
    if not (plain_causal and hi <= cached):  # there, every query reads every cached column
        weights = weights * (allowed[..., lo:hi] & _scoring_queries(allowed))[:, :, None]
    kv_view.scores[layer] = weights.amax(dim=(2, 3))
    return out.view(b, q_heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def _flash_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
               causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention (CPU kernel) that also returns each query row's logsumexp, as float32."""
    if k.shape[2] == 0:  # nothing cached: no weight, logsumexp -inf
        return q.new_zeros(q.shape, dtype=torch.float32), q.new_full(q.shape[:3], -math.inf, dtype=torch.float32)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=bias,
                                                                          scale=scale)[:2]
    return out.float(), lse.float()


def _has_lse_kernel(query: torch.Tensor) -> bool:
    """Whether the fused attention kernel that also returns each row's logsumexp runs on this tensor."""
    return query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16) and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _eager(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scale: float,
           kv_view: KvView, layer: int) -> tuple[torch.Tensor, None]:
    """Attention with every weight materialised, recording scores: where no fused kernel gives the logsumexp."""
    b, q_heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = q_heads // kv_heads
    q = query.reshape(b, kv_heads, groups * q_len, head_dim)
    logits = (torch.matmul(q, key.transpose(-1, -2)).float() * scale).view(b, kv_heads, groups, q_len, k_len)
    logits = logits.masked_fill(~allowed[:, :, None], torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, dim=-1)
    lo, hi = kv_view.score_columns or (0, k_len)
    kv_view.scores[layer] = (weights[..., lo:hi] * _scoring_queries(allowed)[:, :, None]).amax(dim=(2, 3))
    out = torch.matmul(weights.view(b, kv_heads, groups * q_len, k_len).to(value.dtype), value)
    return out.view(b, q_heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def _per_group(allowed: torch.Tensor, b: int, kv_heads: int) -> torch.Tensor:
    """A (b or 1, 1 or kv_heads, q, k) mask as (b * kv_heads, 1, q, k): one entry per group of query heads."""
    q_len, k_len = allowed.shape[-2:]
    return allowed.expand(b, kv_heads, q_len, k_len).reshape(b * kv_heads, 1, q_len, k_len)


def _scoring_queries(allowed: torch.Tensor) -> torch.Tensor:
    """(b, 1, q, 1): the queries whose scores count. A query may read its own column unless it is
    padding (the mask hides a padded token as a key), and padding's attention scores nothing."""
    q_len, k_len = allowed.shape[-2:]
    rows = torch.arange(q_len, device=allowed.device)
    return allowed[:, :, rows, k_len - q_len + rows][..., None]


def _allowed(mask: torch.Tensor | None, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Boolean (b, 1, q, k) of what each query may read: HF's mask, or causal when HF skipped it."""
    if mask is None:
        cols = torch.arange(k_len, device=device)
        rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
        return (cols <= rows)[None, None]
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask[..., :k_len]


def _register() -> None:
    # HF keeps attention functions in a global registry; registering the same function is idempotent.
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
