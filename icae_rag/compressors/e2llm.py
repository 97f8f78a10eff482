"""E2LLM: Encoder Elongated LLMs (Liao et al., arXiv 2409.06679).

The context is cut into sentence-aware chunks (about `chunk_tokens` decoder tokens each); a
pretrained sentence encoder embeds each chunk; an adapter maps it to `soft_tokens_per_chunk`
soft tokens in the decoder's input-embedding space. Two adapters:
- "mlp" (the paper's v1): a two-layer GELU MLP on the pooled sentence embedding;
- "attention" (the paper's v2 pooling by multi-head attention): `m` learned queries attend over
  the encoder's token states, so more of the chunk than one pooled vector reaches the decoder.
The encoder is frozen by default (LoRA optional); the decoder may carry its own LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.chunking import sentence_chunks
from ..errors import CheckpointError, ConfigError
from ..models.backbones import DEFAULT_DECODER, DEFAULT_ENCODER, DecoderBackbone, EncoderBackbone
from ..text import check_text
from .base import Compressor, Encoded


@dataclass
class E2llmConfig:
    """E2LLM hyper-parameters; the ratio is about chunk_tokens / soft_tokens_per_chunk."""

    decoder: str = DEFAULT_DECODER
    encoder: str = DEFAULT_ENCODER
    chunk_tokens: int = 128
    soft_tokens_per_chunk: int = 1
    adapter: str = "mlp"  # "mlp" | "attention"
    adapter_hidden: int = 1024
    attention_heads: int = 4
    encoder_lora_r: int = 0  # 0 = encoder frozen
    decoder_lora_r: int = 0  # 0 = decoder frozen
    lora_alpha_ratio: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("chunk_tokens", "soft_tokens_per_chunk", "adapter_hidden"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.adapter not in ("mlp", "attention"):
            raise ConfigError(f"adapter must be 'mlp' or 'attention', got {self.adapter!r}")
        for name in ("encoder_lora_r", "decoder_lora_r"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 disables LoRA), got {getattr(self, name)}")


class AttentionPooling(nn.Module):
    """`m` learned queries attend over a chunk's token states (pooling by multi-head attention)."""

    def __init__(self, enc_dim: int, d_model: int, m: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(m, hidden) * 0.02)
        self.attn = nn.MultiheadAttention(hidden, heads, kdim=enc_dim, vdim=enc_dim, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.out = nn.Linear(hidden, d_model)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, L, enc_dim) token states + (n, L) mask -> (n, m, d_model)."""
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (n, m, hidden)
        h, _ = self.attn(q, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        h = self.norm1(h + q)
        h = self.norm2(h + self.ffn(h))
        return self.out(h)


class E2llmCompressor(Compressor):
    """E2LLM compressor: sentence encoder + adapter, `m` soft tokens per chunk."""

    kind = "e2llm"
    config_class = E2llmConfig
    trainable = True

    def __init__(self, config: E2llmConfig, decoder: DecoderBackbone, encoder: EncoderBackbone) -> None:
        from peft import LoraConfig, get_peft_model

        super().__init__(config, decoder)
        self.encoder = encoder
        dev, dt = decoder.device, decoder.dtype
        # Seeded without touching the caller's RNG (see IcaeCompressor).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.encoder_lora_r:
                transformer = encoder.model[0].auto_model
                encoder.model[0].auto_model = get_peft_model(transformer, LoraConfig(
                    r=config.encoder_lora_r, lora_alpha=int(config.encoder_lora_r * config.lora_alpha_ratio),
                    target_modules=["query", "key", "value", "dense"]))
            self.decoder_lm = None
            if config.decoder_lora_r:
                self.decoder_lm = get_peft_model(decoder.model, LoraConfig(
                    r=config.decoder_lora_r, lora_alpha=int(config.decoder_lora_r * config.lora_alpha_ratio),
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            d, m = decoder.hidden_size, config.soft_tokens_per_chunk
            if config.adapter == "mlp":
                self.adapter = nn.Sequential(
                    nn.Linear(encoder.dim, config.adapter_hidden), nn.GELU(),
                    nn.Linear(config.adapter_hidden, m * d)).to(dev, dt)
                out_layer = self.adapter[2]
            else:
                self.adapter = AttentionPooling(encoder.dim, d, m, config.attention_heads, config.adapter_hidden).to(dev, dt)
                out_layer = self.adapter.out
            # Start at the scale of real token embeddings so the frozen decoder sees in-range inputs.
            target = decoder.model.get_input_embeddings().weight.float().std().item()
            with torch.no_grad():
                out_layer.weight.mul_(target / max(1e-6, out_layer.weight.std().item()) / 4)
        self.eval()

    def _encoder_tokens(self, text: str) -> int:
        return len(self.encoder.tokenizer(text, add_special_tokens=True)["input_ids"])

    def chunk(self, text: str) -> list[tuple[int, int, str]]:
        """Sentence-aware chunks as (token_start, token_end, chunk_text); every token once."""
        enc = self.decoder.tokenizer(check_text(text), add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        limit = self.encoder.model.max_seq_length

        def piece(s: int, e: int) -> str:
            return text[offsets[s][0] : offsets[e - 1][1]]

        def fits(s: int, e: int) -> bool:
            # The sentence encoder truncates silently past max_seq_length: never let it.
            return self._encoder_tokens(piece(s, e)) <= limit

        spans = sentence_chunks(offsets, text, self.config.chunk_tokens, fits)
        return [(s, e, piece(s, e)) for s, e in spans]

    def encode_chunks(self, chunk_texts: Sequence[str]) -> torch.Tensor:
        """Soft tokens of each chunk text: (n, m, d). Differentiable through adapter (and LoRAs)."""
        st = self.encoder.model
        # sentence-transformers 6 renamed tokenize() to preprocess().
        features = (getattr(st, "preprocess", None) or st.tokenize)(list(chunk_texts))
        features = {k: v.to(self.decoder.device) if torch.is_tensor(v) else v for k, v in features.items()}
        out = st(features)
        if self.config.adapter == "attention":
            tokens = out["token_embeddings"].to(self.decoder.dtype)  # (n, L, enc_dim)
            return self.adapter(tokens, out["attention_mask"].bool())  # (n, m, d)
        soft = self.adapter(out["sentence_embedding"].to(self.decoder.dtype))  # (n, m * d)
        return soft.view(len(chunk_texts), self.config.soft_tokens_per_chunk, self.decoder.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> list[Encoded]:
        """Chunk each text and encode all chunks in batches (differentiable)."""
        chunked = [self.chunk(t) for t in texts]
        flat = [c[2] for cs in chunked for c in cs]
        rows = [self.encode_chunks(flat[b : b + batch_size])
                for b in tqdm(range(0, len(flat), batch_size), desc="e2llm compress", disable=not progress, unit="batch")]
        soft = torch.cat(rows)  # (total_chunks, m, d)
        m, out, i = self.config.soft_tokens_per_chunk, [], 0
        for chunks in chunked:
            out.append((soft[i : i + len(chunks)].reshape(-1, soft.shape[-1]), [(s, e, m) for s, e, _ in chunks]))
            i += len(chunks)
        return out

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter weights plus the encoder/decoder LoRA weights when enabled."""
        from peft import get_peft_model_state_dict

        state = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        if self.config.encoder_lora_r:
            state |= {f"encoder_lora.{k}": v for k, v in get_peft_model_state_dict(self.encoder.model[0].auto_model).items()}
        if self.decoder_lm is not None:
            state |= {f"decoder_lora.{k}": v for k, v in get_peft_model_state_dict(self.decoder_lm).items()}
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors from `trainable_state_dict`; a missing or unexpected key raises."""
        from peft import set_peft_model_state_dict

        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            raise CheckpointError(
                f"checkpoint tensors do not match this E2LLM config: missing {sorted(expected - set(state))[:5]}, "
                f"unexpected {sorted(set(state) - expected)[:5]}")

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v.to(self.decoder.device) for k, v in state.items() if k.startswith(prefix)}

        self.adapter.load_state_dict({k: v.to(self.decoder.dtype) for k, v in part("adapter.").items()})
        if self.config.encoder_lora_r:
            set_peft_model_state_dict(self.encoder.model[0].auto_model, part("encoder_lora."))
        if self.decoder_lm is not None:
            set_peft_model_state_dict(self.decoder_lm, {k: v.to(self.decoder.dtype) for k, v in part("decoder_lora.").items()})

    def backbones_info(self) -> dict[str, dict[str, str]]:
        """Decoder and encoder names + fingerprints."""
        return super().backbones_info() | {"encoder": {"name": self.encoder.name, "fingerprint": self.encoder.fingerprint}}

    @classmethod
    def build(cls, config: E2llmConfig, *, device: str = "auto", dtype: str = "auto", **unknown: Any) -> E2llmCompressor:
        """Load the decoder and encoder named in `config` and wrap them (untrained); the options are the base's."""
        from ..models.backbones import load_decoder, load_encoder

        cls.check_build(config, unknown)
        decoder = load_decoder(config.decoder, device=device, dtype=dtype)
        return cls(config, decoder, load_encoder(config.encoder, device=str(decoder.device)))
