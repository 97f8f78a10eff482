"""Answer from soft prompts: build `inputs_embeds` (chat prefix, contexts, question) and decode.

Every answer, raw or compressed, goes through `build_prompt` and `_decode_steps`, so the raw-text
baseline and the compressed modes differ only in what stands in the context block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .errors import InvalidInputError
from .soft_prompt import SoftPrompt
from .text import check_text

if TYPE_CHECKING:
    from .compressors.base import Compressor

_PLACEHOLDER = "<<icae_rag:context>>"
INSTRUCTIONS = {
    "answer": "Answer the question using the context. Reply with a short answer.",
    "autoencode": "Repeat the context word for word.",
    "continue": "Continue the text of the context.",
}
Context = SoftPrompt | str
# Training passes soft rows as tensors (with grad); users pass SoftPrompts or raw strings.
TrainingContext = SoftPrompt | str | torch.Tensor


@dataclass
class GenerationConfig:
    """Decoding settings: greedy by default; sampling with temperature/top_p when do_sample."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise InvalidInputError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise InvalidInputError("sampling needs temperature > 0 and 0 < top_p <= 1")
        self.stop = tuple(self.stop)


@dataclass
class Answer:
    """A generated answer and what it cost: decoder input positions, soft tokens and seconds."""

    text: str
    input_positions: int
    soft_tokens: int
    source_tokens: int
    new_tokens: int
    prefill_seconds: float
    seconds: float
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def compression_ratio(self) -> float:
        """Source tokens of the contexts per decoder position they took (1.0 for raw text)."""
        return self.source_tokens / max(1, self.soft_tokens)


@dataclass
class Prompt:
    """Decoder inputs for one question: (T, d) embeddings and what the contexts cost."""

    embeddings: torch.Tensor
    soft_tokens: int
    source_tokens: int


def build_prompt(compressor: Compressor, contexts: Sequence[TrainingContext], *, mode: str = "answer",
                 question: str | None = None) -> Prompt:
    """Chat prefix + instruction, the contexts (separated by blank lines), mode marker, question.

    Training and inference share this layout, so a compressor is trained on exactly what it reads.
    """
    if mode not in INSTRUCTIONS:
        raise InvalidInputError(f"unknown mode {mode!r}: use one of {sorted(INSTRUCTIONS)}")
    if mode == "answer":
        check_text(question)
        if _PLACEHOLDER in question:
            raise InvalidInputError(f"the question may not contain {_PLACEHOLDER!r}")
    if isinstance(contexts, (str, SoftPrompt)):
        raise InvalidInputError("contexts must be a list of SoftPrompt or str, not a single item")
    dec = compressor.decoder
    user = f"{INSTRUCTIONS[mode]}\n\nContext:\n{_PLACEHOLDER}"
    if mode == "answer":
        user += f"\n\nQuestion: {question}"
    before, after = _render_chat(dec.tokenizer, user).split(_PLACEHOLDER)
    parts, soft, source = [dec.embed_text(before)], 0, 0
    separator = dec.embed_text("\n\n")
    for i, ctx in enumerate(contexts):
        if i:
            parts.append(separator)
        if isinstance(ctx, SoftPrompt):
            compressor.check_soft_prompt(ctx)
            parts.append(ctx.embeddings.to(dec.device, dec.dtype))
            soft += ctx.num_soft_tokens
            source += ctx.source_tokens
        elif isinstance(ctx, torch.Tensor):
            parts.append(ctx.to(dec.dtype))
            soft += ctx.shape[0]
            source += ctx.shape[0]
        elif isinstance(ctx, str):
            rows = dec.embed_text(check_text(ctx))
            parts.append(rows)
            soft += rows.shape[0]
            source += rows.shape[0]
        else:
            raise InvalidInputError(f"a context must be a SoftPrompt or a str, got {type(ctx).__name__}")
    parts.append(compressor.mode_embedding(mode).to(dec.dtype))
    parts.append(dec.embed_text(after))
    return Prompt(torch.cat(parts), soft, source)


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


@torch.no_grad()
def _decode_steps(compressor: Compressor, prompts: Sequence[torch.Tensor], cfg: GenerationConfig
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next token ids (B,), finished mask (B,)) per step; KV cache, left-padded batch."""
    dec = compressor.decoder
    model = dec.model
    b, t = len(prompts), max(p.shape[0] for p in prompts)
    x = prompts[0].new_zeros(b, t, prompts[0].shape[-1])
    mask = torch.zeros(b, t, dtype=torch.long, device=dec.device)
    for i, p in enumerate(prompts):
        x[i, t - p.shape[0]:] = p
        mask[i, t - p.shape[0]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stop_ids = torch.tensor(sorted(stop_token_ids(dec.tokenizer)), device=dec.device)
    generator = None
    if cfg.do_sample:
        generator = torch.Generator(device=dec.device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    finished = torch.zeros(b, dtype=torch.bool, device=dec.device)
    with compressor.decoding():
        out = model(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        for _ in range(cfg.max_new_tokens):
            logits = out.logits[:, -1].float()
            nxt = _pick(logits, cfg, generator)
            nxt = torch.where(finished, torch.full_like(nxt, int(stop_ids[0])), nxt)
            finished = finished | torch.isin(nxt, stop_ids)
            yield nxt, finished
            if bool(finished.all()):
                return
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(inputs_embeds=dec.embed_ids(nxt[:, None]), attention_mask=mask, position_ids=positions,
                        past_key_values=out.past_key_values, use_cache=True)


def _pick(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if not cfg.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # smallest set whose mass reaches top_p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return idx.gather(-1, choice).squeeze(-1)


def _finish_text(tokenizer, ids: list[int], stop: tuple[str, ...]) -> str:
    stop_ids = stop_token_ids(tokenizer)
    ids = [i for i in ids if i not in stop_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def _config(generation: dict) -> GenerationConfig:
    try:
        return GenerationConfig(**generation)
    except TypeError as e:
        raise InvalidInputError(f"{e}: valid generation options are max_new_tokens, do_sample, temperature, "
                                "top_p, stop, seed") from e


def generate_from_prompts(compressor: Compressor, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[Answer]:
    """Greedy/sampled decoding of several prompts in one batch."""
    start = time.perf_counter()
    ids: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    prefill = None
    for nxt, finished in _decode_steps(compressor, [p.embeddings for p in prompts], cfg):
        if prefill is None:
            prefill = time.perf_counter() - start
        for i, tok in enumerate(nxt.tolist()):
            if not done[i]:
                ids[i].append(tok)
            done[i] = bool(finished[i])
    seconds = time.perf_counter() - start
    tok = compressor.decoder.tokenizer
    return [Answer(_finish_text(tok, ids[i], cfg.stop), p.embeddings.shape[0], p.soft_tokens, p.source_tokens,
                   len(ids[i]), prefill or 0.0, seconds, ids[i]) for i, p in enumerate(prompts)]


def answer(compressor: Compressor, question: str, contexts: Sequence[Context], **generation) -> Answer:
    """Answer one question from soft prompts and/or raw-text contexts."""
    return answer_many(compressor, [question], [contexts], **generation)[0]


def answer_many(compressor: Compressor, questions: Sequence[str], contexts: Sequence[Sequence[Context]],
                **generation) -> list[Answer]:
    """Answer several questions in one batch; `contexts[i]` belongs to `questions[i]`."""
    if isinstance(questions, str):
        raise InvalidInputError("answer_many takes a list of questions; use answer() for one")
    if len(questions) != len(contexts):
        raise InvalidInputError(f"{len(questions)} questions but {len(contexts)} context lists: pass one list per question")
    if not questions:
        raise InvalidInputError("answer_many needs at least one question")
    cfg = _config(generation)
    with torch.no_grad():
        prompts = [build_prompt(compressor, ctx, question=q) for q, ctx in zip(questions, contexts, strict=True)]
    return generate_from_prompts(compressor, prompts, cfg)


def stream(compressor: Compressor, question: str, contexts: Sequence[Context], **generation) -> Iterator[str]:
    """Yield the answer's text piece by piece as tokens are generated."""
    cfg = _config(generation)
    with torch.no_grad():
        prompt = build_prompt(compressor, contexts, question=question)
    tok = compressor.decoder.tokenizer
    stop_ids = stop_token_ids(tok)
    ids: list[int] = []
    sent = ""
    for nxt, _ in _decode_steps(compressor, [prompt.embeddings], cfg):
        token = int(nxt[0])
        if token in stop_ids:
            break
        ids.append(token)
        text = tok.decode(ids, skip_special_tokens=True).lstrip()
        if any(s and s in text for s in cfg.stop):
            text = text[: min(text.index(s) for s in cfg.stop if s and s in text)]
            if len(text) > len(sent):
                yield text[len(sent):]
            return
        # Hold back while the last bytes form an incomplete UTF-8 character.
        if text.endswith("\ufffd") or len(text) <= len(sent):
            continue
        yield text[len(sent):]
        sent = text


def reconstruct(compressor: Compressor, soft_prompt: SoftPrompt, *, max_new_tokens: int | None = None,
                batch_size: int = 8) -> str:
    """Decode each piece of a memory in autoencoding mode; the text of all pieces in order."""
    ids = reconstruct_token_ids(compressor, soft_prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return compressor.decoder.tokenizer.decode(ids, skip_special_tokens=True)


def reconstruct_token_ids(compressor: Compressor, soft_prompt: SoftPrompt, *, max_new_tokens: int | None = None,
                          batch_size: int = 8) -> list[int]:
    """Token ids reconstructed from each piece (batched), concatenated: pieces are consecutive
    token ranges of one source, so joining ids (not stripped texts) keeps the spacing."""
    if not isinstance(soft_prompt, SoftPrompt):
        raise InvalidInputError(f"reconstruct takes a SoftPrompt, got {type(soft_prompt).__name__}")
    compressor.check_soft_prompt(soft_prompt)
    pieces = list(soft_prompt.pieces)
    stops = stop_token_ids(compressor.decoder.tokenizer)
    ids: list[int] = []
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b : b + batch_size]
        with torch.no_grad():
            prompts = [build_prompt(compressor, [_piece_prompt(soft_prompt, p)], mode="autoencode") for p in batch]
        budget = max_new_tokens or max(p.source_tokens for p in batch) + 16
        for answer in generate_from_prompts(compressor, prompts, GenerationConfig(max_new_tokens=budget)):
            ids += [t for t in answer.token_ids if t not in stops]
    return ids


def _piece_prompt(prompt: SoftPrompt, piece) -> SoftPrompt:
    from dataclasses import replace

    rows = prompt.embeddings[piece.slot_start : piece.slot_end]
    return SoftPrompt(rows, (replace(piece, slot_start=0, slot_end=rows.shape[0]),), prompt.compressor,
                      prompt.compressor_version, prompt.backbone)
