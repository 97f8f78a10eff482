"""The prompt layout every answer shares: chat prefix, contexts (separated by blank lines), mode marker, question.

Training and inference share `build_prompt`, so a compressor is trained on exactly what it reads, and
the raw-text baseline and the compressed modes differ only in what stands in the context block.
KV memories are laid out after the prefix they were computed under (`context_prefix_ids`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import BackboneMismatchError, InvalidInputError
from ..memories.base import Memory
from ..memories.kv_memory import KvMemory, token_ids_sha256
from ..memories.soft_prompt import SoftPrompt
from ..text import check_text
from .reader import MemoryReader

_PLACEHOLDER = "<<icae_rag:context>>"
INSTRUCTIONS = {
    "answer": "Answer the question using the context. Reply with a short answer.",
    "autoencode": "Repeat the context word for word.",
    "continue": "Continue the text of the context.",
}
# "repeat" keeps the answer prompt's prefix and asks for the context after it: KV memories are
# computed under that prefix, so they are scored and reconstructed in this layout.
REPEAT_REQUEST = "Repeat the context word for word."
MODES = (*INSTRUCTIONS, "repeat")
Context = Memory | str
# Training passes soft rows as tensors (with grad); users pass memories or raw strings.
TrainingContext = Memory | str | torch.Tensor


@dataclass
class Prompt:
    """Decoder inputs for one question, in order: the prefix's embeddings, then embeddings (T, d) and
    KV memories; plus what the contexts cost. With `read_entries` (kvzip's read budget), the
    question's prefill reads every entry of the KV memories and the answer's tokens read that many
    of them, chosen by the question's attention (`selection.keep_read_entries`)."""

    segments: list[torch.Tensor | KvMemory]
    context_positions: int  # decoder positions the contexts take (memories and raw text) while answering
    source_tokens: int
    read_entries: int | None = None

    @property
    def positions(self) -> int:
        """Decoder positions the prompt takes while answering (a KV memory counts its kept entries'
        token-equivalents, read ones under a read budget)."""
        memories = [s for s in self.segments if isinstance(s, KvMemory)]
        text = sum(s.shape[0] for s in self.segments if not isinstance(s, KvMemory))
        if self.read_entries is None:
            return text + sum(m.num_positions for m in memories)
        return text + math.ceil(self.read_entries / (memories[0].layers * memories[0].kv_heads))

    @property
    def has_memories(self) -> bool:
        """Whether any context is a KV memory (then the prompt cannot be one embedding tensor)."""
        return any(isinstance(s, KvMemory) for s in self.segments)

    @property
    def embeddings(self) -> torch.Tensor:
        """The whole prompt as one (T, d) embedding tensor (not for prompts with KV memories)."""
        if self.has_memories:
            raise InvalidInputError("a prompt with KV memories has no input-embedding form: decode it "
                                    "with generate_from_prompts")
        return torch.cat(self.segments)


def prompt_texts(tokenizer, mode: str, question: str | None = None) -> tuple[str, str]:
    """The chat text (before, after) the context block in `mode`."""
    if mode not in MODES:
        raise InvalidInputError(f"unknown mode {mode!r}: use one of {list(MODES)}")
    instruction = INSTRUCTIONS["answer" if mode == "repeat" else mode]
    user = f"{instruction}\n\nContext:\n{_PLACEHOLDER}"
    if mode == "answer":
        user += f"\n\nQuestion: {question}"
    elif mode == "repeat":
        user += f"\n\n{REPEAT_REQUEST}"
    before, after = _render_chat(tokenizer, user).split(_PLACEHOLDER)
    return before, after


def context_prefix_ids(tokenizer) -> list[int]:
    """Token ids of the text before the context in answer (and repeat) prompts: what KV memories follow."""
    return tokenizer(prompt_texts(tokenizer, "repeat")[0], add_special_tokens=False)["input_ids"]


def build_prompt(compressor: MemoryReader, contexts: Sequence[TrainingContext], *, mode: str = "answer",
                 question: str | None = None) -> Prompt:
    """Chat prefix + instruction, the contexts (separated by blank lines), mode marker, question.

    Training and inference share this layout, so a compressor is trained on exactly what it reads.
    """
    if mode == "answer":
        check_text(question)
        if _PLACEHOLDER in question:
            raise InvalidInputError(f"the question may not contain {_PLACEHOLDER!r}")
    if isinstance(contexts, (str, Memory)):
        raise InvalidInputError("contexts must be a list of memories (SoftPrompt, KvMemory) or str, not a single item")
    entries = compressor.read_entries(contexts) if mode == "answer" else None
    if entries is None:
        return _layout(compressor, compressor.budget_contexts(contexts, question=question), mode, question)
    # Every entry is laid out: the question's prefill reads them all, its answer `entries` of them.
    whole = _layout(compressor, contexts, mode, question)
    read = replace(whole, read_entries=entries)
    return replace(read, context_positions=whole.context_positions + read.positions - whole.positions)


def _layout(compressor: MemoryReader, contexts: Sequence[TrainingContext], mode: str, question: str | None) -> Prompt:
    """`build_prompt` for contexts as they are read (already budgeted)."""
    dec = compressor.decoder
    before, after = prompt_texts(dec.tokenizer, mode, question)
    prefix_sha = None
    segments, soft, source = [dec.embed_text(before)], 0, 0
    separator = dec.embed_text("\n\n")
    for i, ctx in enumerate(contexts):
        if i:
            segments.append(separator)
        if isinstance(ctx, KvMemory):
            compressor.check_memory(ctx)
            prefix_sha = prefix_sha or token_ids_sha256(dec.tokenizer(before, add_special_tokens=False)["input_ids"])
            if ctx.prefix_sha256 != prefix_sha:
                raise BackboneMismatchError(
                    f"this KV memory was computed after another prompt prefix than the {mode!r} prompt's: "
                    "KV memories are read in 'answer' and 'repeat' prompts of the icae-rag version that made them; "
                    "compress the text again")
            segments.append(ctx)
        elif isinstance(ctx, SoftPrompt):
            compressor.check_memory(ctx)
            segments.append(ctx.embeddings.to(dec.device, dec.dtype))
        elif isinstance(ctx, torch.Tensor):
            segments.append(ctx.to(dec.dtype))
            soft += ctx.shape[0]
            source += ctx.shape[0]
            continue
        elif isinstance(ctx, str):
            rows = dec.embed_text(check_text(ctx))
            segments.append(rows)
            soft += rows.shape[0]
            source += rows.shape[0]
            continue
        else:
            raise InvalidInputError(f"a context must be a SoftPrompt, KvMemory or str, got {type(ctx).__name__}")
        soft += ctx.num_positions
        source += ctx.source_tokens
    segments.append(compressor.mode_embedding(mode).to(dec.dtype))
    segments.append(dec.embed_text(after))
    return Prompt(_merge_rows(segments), soft, source)


def _merge_rows(segments: list) -> list:
    """Join neighbouring embedding tensors after the prefix (the prefix stays apart: it is shared)."""
    out = [segments[0]]
    for seg in segments[1:]:
        if isinstance(seg, torch.Tensor) and seg.shape[0] == 0:
            continue
        if isinstance(seg, torch.Tensor) and len(out) > 1 and isinstance(out[-1], torch.Tensor):
            out[-1] = torch.cat([out[-1], seg])
        else:
            out.append(seg)
    return out


def _render_chat(tokenizer, user: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{user}\n\nAnswer:"


def stop_token_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: EOS and the chat end-of-turn tokens the tokenizer knows."""
    ids = {tokenizer.eos_token_id}
    for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}
