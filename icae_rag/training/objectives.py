"""Losses: the decoder reads a soft prompt (the trainable kinds' memory) and predicts a target; loss on target tokens only.

All objectives (ICAE autoencoding, continuation and QA fine-tuning; E2LLM reconstruction and
instruction tuning) are one computation with different prompts, built by the same
`build_prompt` that inference uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..compressors.base import Compressor
from ..decoding import build_prompt, stop_token_ids
from .samples import Sample


def target_ids(compressor: Compressor, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids the decoder must produce: the text, then the end-of-turn token."""
    tok = compressor.decoder.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return ids + [end if end in stop_token_ids(tok) else tok.eos_token_id]


def lm_loss(compressor: Compressor, prompts: Sequence[torch.Tensor], targets: Sequence[list[int]]) -> torch.Tensor:
    """Mean cross-entropy of `targets` given `prompts` (each (T_i, d)), right-padded into one batch."""
    dec = compressor.decoder
    seqs = [torch.cat([p, dec.embed_ids(torch.tensor(t, dtype=torch.long))]) for p, t in zip(prompts, targets, strict=True)]
    length = max(s.shape[0] for s in seqs)
    x = seqs[0].new_zeros(len(seqs), length, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), length, dtype=torch.long, device=dec.device)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    with compressor.reading():
        hidden = dec.transformer(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
    # Position P-1+j predicts target token j; project only those rows to the vocabulary.
    rows = torch.cat([hidden[i, p.shape[0] - 1 : p.shape[0] - 1 + len(t)] for i, (p, t) in enumerate(zip(prompts, targets, strict=True))])
    labels = torch.tensor([tok for t in targets for tok in t], device=dec.device)
    return F.cross_entropy(dec.lm_head(rows).float(), labels)


class ObjectiveModule(nn.Module):
    """Wraps a compressor so that `forward(samples)` is the training loss (what DDP wraps)."""

    def __init__(self, compressor: Compressor, max_answer_tokens: int) -> None:
        super().__init__()
        self.compressor = compressor
        self.max_answer_tokens = max_answer_tokens
        self.last_tokens = 0  # source + target tokens of the last batch, for throughput


    def forward(self, samples: Sequence[Sample], use_memory: bool = True) -> torch.Tensor:
        """Compress each sample's context, then score its target in its mode.

        `use_memory=False` scores the same targets with an empty context: the gap between the two
        losses is how much the decoder actually reads from the memory.
        """
        c = self.compressor
        encoded = c.encode([s.context for s in samples])
        prompts, targets = [], []
        for s, (rows, _) in zip(samples, encoded, strict=True):
            contexts = [rows] if use_memory else []
            prompts.append(build_prompt(c, contexts, mode=s.mode, question=s.question).embeddings)
            limit = self.max_answer_tokens if s.mode == "answer" else None
            targets.append(target_ids(c, s.target, limit))
        self.last_tokens = sum(e - s for _, spans in encoded for s, e, _ in spans) + sum(map(len, targets))
        return lm_loss(c, prompts, targets)
