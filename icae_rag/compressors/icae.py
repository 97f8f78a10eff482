"""ICAE: In-context Autoencoder (Ge et al., arXiv 2307.06945).

A LoRA-adapted copy of the decoder reads a span of L tokens followed by k = L / ratio learnable
memory embeddings; the last-layer hidden states at the memory positions are the memory slots.
The frozen decoder (LoRA disabled) reads the slots as soft tokens. Texts longer than one span are
cut into spans, compressed one by one and concatenated.

`slot_source="span_anchors"` is a variant for small compute budgets: no memory tokens; slot j is
the input embedding of the last token of group j (`ratio` tokens) plus a learned, zero-initialised
projection of the encoder's last-layer state at that token. At step 0 the decoder reads every
`ratio`-th token exactly (a floor it understands without training); training adds the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.chunking import slots_for, split_spans
from ..errors import CheckpointError, ConfigError
from ..models.backbones import DEFAULT_DECODER, DecoderBackbone
from .base import Compressor, Encoded

MODES = ("autoencode", "continue", "answer")


@dataclass
class IcaeConfig:
    """ICAE hyper-parameters; `span_tokens / ratio` memory slots per full span."""

    decoder: str = DEFAULT_DECODER
    span_tokens: int = 512
    ratio: int = 4
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Last-layer states are ~14x the norm of input embeddings (SmolLM2: 45 vs 3.2); a learned
    # rescale + identity-initialised projection puts slots where the frozen decoder can read them.
    slot_projection: bool = True
    slot_source: str = "memory_tokens"  # "memory_tokens" (the paper) | "span_anchors"
    seed: int = 0

    def __post_init__(self) -> None:
        self.lora_target_modules = tuple(self.lora_target_modules)
        if self.span_tokens <= 0 or self.ratio <= 0:
            raise ConfigError(f"span_tokens ({self.span_tokens}) and ratio ({self.ratio}) must be positive")
        if self.span_tokens % self.ratio:
            raise ConfigError(
                f"span_tokens ({self.span_tokens}) must be divisible by ratio ({self.ratio}), "
                "so that a full span gives a whole number of memory slots")
        if self.slot_source not in ("memory_tokens", "span_anchors"):
            raise ConfigError(f"slot_source must be 'memory_tokens' or 'span_anchors', got {self.slot_source!r}")
        if self.slot_source == "span_anchors" and not self.slot_projection:
            raise ConfigError("slot_source='span_anchors' needs slot_projection=True (the learned residual)")
        if self.lora_r <= 0:
            raise ConfigError(f"lora_r must be positive, got {self.lora_r}")

    @property
    def memory_slots(self) -> int:
        """Memory slots for a full span."""
        return self.span_tokens // self.ratio


class IcaeCompressor(Compressor):
    """ICAE compressor: LoRA encoder + k memory embeddings per span; frozen decoder reads slots."""

    kind = "icae"
    config_class = IcaeConfig
    trainable = True

    def __init__(self, config: IcaeConfig, decoder: DecoderBackbone) -> None:
        super().__init__(config, decoder)
        # Seeded without touching the caller's RNG: an untrained compressor is the same on every
        # build, and building one does not shift a training run's data order.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self._init_trainable(config, decoder)
        self.lm.eval()

    def _init_trainable(self, config: IcaeConfig, decoder: DecoderBackbone) -> None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target_modules), bias="none")
        # peft injects LoRA layers into decoder.model in place; `reading()` switches them off.
        self.lm = get_peft_model(decoder.model, lora)
        d = decoder.hidden_size
        emb = decoder.model.get_input_embeddings().weight.detach()
        gen = torch.Generator().manual_seed(config.seed)
        # Initialise like real token embeddings (same mean and spread) so the encoder sees in-range inputs.
        mean, std = emb.float().mean(0).cpu(), emb.float().std(0).cpu()

        def init(n: int) -> torch.Tensor:
            return (mean + std * torch.randn(n, d, generator=gen)).to(emb.dtype)

        if config.slot_source == "memory_tokens":
            self.memory = nn.Parameter(init(config.memory_slots).to(emb.device))
        self.modes = nn.Parameter(init(len(MODES)).to(emb.device))
        if config.slot_projection:
            self.slot_scale = nn.Parameter(emb.float().norm(dim=-1).mean().to(emb.dtype).to(emb.device))
            self.slot_proj = nn.Linear(d, d, device=emb.device, dtype=emb.dtype)
            with torch.no_grad():
                # memory_tokens: identity (slots are the states); span_anchors: zero (start at the anchors).
                self.slot_proj.weight.copy_(torch.eye(d) if config.slot_source == "memory_tokens" else torch.zeros(d, d))
                self.slot_proj.bias.zero_()

    def reading(self):
        """The frozen decoder reads slots with the LoRA adapter switched off."""
        return self.lm.disable_adapter()

    def mode_embedding(self, mode: str) -> torch.Tensor:
        """The learned [AE] / [LM] / [FT] embedding, shape (1, d)."""
        return self.modes[MODES.index(mode)].unsqueeze(0)

    def encode_spans(self, spans: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Memory slots of each span: list of (ceil(L_i / ratio), d). Differentiable."""
        cfg = self.config
        lengths = [len(s) for s in spans]
        if max(lengths) > cfg.span_tokens:
            raise ValueError(f"a span has {max(lengths)} tokens, more than span_tokens={cfg.span_tokens}")
        if cfg.slot_source == "span_anchors":
            return self._encode_anchors(spans)
        dev = self.decoder.device
        k = [slots_for(n, cfg.ratio) for n in lengths]
        total = max(n + m for n, m in zip(lengths, k, strict=True))
        embed = self.lm.get_input_embeddings()
        rows, mask = [], torch.zeros(len(spans), total, dtype=torch.long, device=dev)
        for i, (ids, m) in enumerate(zip(spans, k, strict=True)):
            tokens = embed(torch.tensor(list(ids), dtype=torch.long, device=dev))  # (L, d)
            pad = total - len(ids) - m
            # Right padding: under causal attention the pads after the memory never reach it.
            rows.append(torch.cat([tokens, self.memory[:m], tokens.new_zeros(pad, tokens.shape[-1])]))
            mask[i, : len(ids) + m] = 1
        inputs = torch.stack(rows)  # (B, T, d)
        hidden = self.decoder.transformer(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
        slots = [hidden[i, n : n + m] for i, (n, m) in enumerate(zip(lengths, k, strict=True))]
        return [self._project(s) for s in slots]

    def _encode_anchors(self, spans: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """span_anchors: slot j = embedding of group j's last token + projected encoder state there."""
        dev, r = self.decoder.device, self.config.ratio
        total = max(len(s) for s in spans)
        ids = torch.zeros(len(spans), total, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for i, span in enumerate(spans):
            ids[i, : len(span)] = torch.tensor(list(span), dtype=torch.long, device=dev)
            mask[i, : len(span)] = 1
        embed = self.lm.get_input_embeddings()
        hidden = self.decoder.transformer(inputs_embeds=embed(ids), attention_mask=mask, use_cache=False).last_hidden_state
        out = []
        for i, span in enumerate(spans):
            anchors = torch.tensor([min((j + 1) * r, len(span)) - 1 for j in range(slots_for(len(span), r))], device=dev)
            out.append(embed(ids[i, anchors]) + self._project(hidden[i, anchors]))
        return out

    def _project(self, slots: torch.Tensor) -> torch.Tensor:
        if not self.config.slot_projection:
            return slots
        return self.slot_proj(F.normalize(slots, dim=-1) * self.slot_scale)

    def encode(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False) -> list[Encoded]:
        """Tokenize and encode texts span by span (differentiable)."""
        return self.encode_ids([self.tokenize(t) for t in texts], batch_size=batch_size, progress=progress)

    def encode_ids(self, token_lists: Sequence[Sequence[int]], *, batch_size: int = 8,
                   progress: bool = False) -> list[Encoded]:
        """Encode token sequences of any length: spans batched across sequences, none dropped."""
        jobs = [(t, s, e) for t, ids in enumerate(token_lists) for s, e in split_spans(len(ids), self.config.span_tokens)]
        slots: list[torch.Tensor] = []
        for b in tqdm(range(0, len(jobs), batch_size), desc="icae compress", disable=not progress, unit="batch"):
            slots += self.encode_spans([token_lists[t][s:e] for t, s, e in jobs[b : b + batch_size]])
        rows: list[list[torch.Tensor]] = [[] for _ in token_lists]
        spans: list[list[tuple[int, int, int]]] = [[] for _ in token_lists]
        for (t, s, e), slot in zip(jobs, slots, strict=True):
            rows[t].append(slot)
            spans[t].append((s, e, slot.shape[0]))
        return [(torch.cat(r), sp) for r, sp in zip(rows, spans, strict=True)]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights (adapter-name free keys), memory and mode embeddings, slot projection."""
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.lm).items()}
        if self.config.slot_source == "memory_tokens":
            state["memory"] = self.memory
        state["modes"] = self.modes
        if self.config.slot_projection:
            state["slot_scale"] = self.slot_scale.reshape(1)
            state["slot_proj.weight"] = self.slot_proj.weight
            state["slot_proj.bias"] = self.slot_proj.bias
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors from `trainable_state_dict`; a missing or unexpected key raises."""
        from peft import set_peft_model_state_dict

        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            raise CheckpointError(
                f"checkpoint tensors do not match this ICAE config: missing {sorted(expected - set(state))[:5]}, "
                f"unexpected {sorted(set(state) - expected)[:5]}")
        dev, dt = self.decoder.device, self.decoder.dtype
        lora = {k.removeprefix("lora."): v.to(dev, dt) for k, v in state.items() if k.startswith("lora.")}
        result = set_peft_model_state_dict(self.lm, lora)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"LoRA tensors not used by the model: {result.unexpected_keys[:5]}")
        with torch.no_grad():
            if self.config.slot_source == "memory_tokens":
                self.memory.copy_(state["memory"])
            self.modes.copy_(state["modes"])
            if self.config.slot_projection:
                self.slot_scale.copy_(state["slot_scale"].reshape(()))
                self.slot_proj.weight.copy_(state["slot_proj.weight"])
                self.slot_proj.bias.copy_(state["slot_proj.bias"])

    @staticmethod
    def expected_ratio(config: IcaeConfig) -> float:
        """Compression ratio on full spans."""
        return config.span_tokens / math.ceil(config.span_tokens / config.ratio)
