"""Decoding: greedy or sampled answers of a batch of prompts, streamed text, and reconstruction of
what a memory holds. Every answer, raw or compressed, goes through `build_prompt` and
`_decode_steps`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import torch

from ..errors import InvalidInputError
from ..memories.base import Memory
from ..memories.kv_memory import KvMemory
from ..memories.soft_prompt import SoftPrompt
from ..models.hf_compat import cache_arg, output_cache
from .prefill import _prefill
from .prompts import Context, Prompt, build_prompt, stop_token_ids
from .reader import MemoryReader
from .selection import read_prefill


@dataclass
class GenerationConfig:
    """Decoding settings: greedy by default; sampling with temperature/top_p when do_sample.

    `no_repeat_ngram_size` (default 4; 0 turns it off) forbids any n-gram of generated tokens from
    occurring twice in one answer, the rule of HF's `no_repeat_ngram_size`: a small decoder otherwise
    loops ("The answer is: The answer is: ..."). Only the answer's own tokens count, not the prompt's,
    so an answer may still copy any phrase of its context.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()
    seed: int | None = None
    no_repeat_ngram_size: int = 4

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> GenerationConfig:
        """The config of keyword options; an unknown option is an InvalidInputError listing the valid ones."""
        try:
            return cls(**options)
        except TypeError as e:
            valid = ", ".join(f.name for f in fields(cls))
            raise InvalidInputError(f"{e}: valid generation options are {valid}") from e

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise InvalidInputError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int) \
                or self.no_repeat_ngram_size < 0:
            raise InvalidInputError("no_repeat_ngram_size must be a whole number >= 0 (0 turns the loop stop off), "
                                    f"got {self.no_repeat_ngram_size!r}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise InvalidInputError("sampling needs temperature > 0 and 0 < top_p <= 1")
        self.stop = tuple(self.stop)


@dataclass
class Answer:
    """A generated answer and what it cost: decoder input positions (all, and the contexts'), seconds."""

    text: str
    input_positions: int
    context_positions: int  # decoder positions the contexts took (memories and raw text)
    source_tokens: int
    new_tokens: int
    prefill_seconds: float
    seconds: float
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def compression_ratio(self) -> float:
        """Source tokens of the contexts per decoder position they took (1.0 for raw text)."""
        return self.source_tokens / max(1, self.context_positions)


@torch.no_grad()
def _decode_steps(compressor: MemoryReader, prompts: Sequence[Prompt], cfg: GenerationConfig
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next token ids (B,), finished mask (B,)) per step; KV cache, left-padded batch."""
    dec = compressor.decoder
    b = len(prompts)
    stop_ids = torch.tensor(sorted(stop_token_ids(dec.tokenizer)), device=dec.device)
    generator = None
    if cfg.do_sample:
        generator = torch.Generator(device=dec.device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    finished = torch.zeros(b, dtype=torch.bool, device=dec.device)
    repeats = _NgramBan(b, cfg.no_repeat_ngram_size) if cfg.no_repeat_ngram_size else None
    with compressor.reading():
        logits, cache, mask, positions, view = read_prefill(compressor, prompts)
        for step in range(cfg.max_new_tokens):
            logits = logits.float()
            if repeats is not None:
                logits = repeats.mask(logits)
            nxt = _pick(logits, cfg, generator)
            nxt = torch.where(finished, torch.full_like(nxt, int(stop_ids[0])), nxt)
            if repeats is not None:
                repeats.add(nxt.tolist(), finished.tolist())
            finished = finished | torch.isin(nxt, stop_ids)
            yield nxt, finished
            if bool(finished.all()) or step == cfg.max_new_tokens - 1:
                return
            logits, cache, mask = _forward(compressor, nxt[:, None], cache, mask, positions, view)
            logits, positions = logits[:, -1], positions + 1


class _NgramBan:
    """Per row, the tokens that would repeat an n-gram of the row's generated tokens (HF's
    no-repeat-n-gram rule), kept incrementally: each step costs one dict lookup per row."""

    def __init__(self, rows: int, n: int) -> None:
        self.n = n
        self.history: list[list[int]] = [[] for _ in range(rows)]
        self.followers: list[dict[tuple[int, ...], set[int]]] = [{} for _ in range(rows)]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (B, V) with every banned next token at -inf."""
        k = self.n - 1
        for i, hist in enumerate(self.history):
            banned = self.followers[i].get(tuple(hist[len(hist) - k:])) if len(hist) >= k else None
            if banned:
                logits[i, list(banned)] = float("-inf")
        return logits

    def add(self, tokens: list[int], finished: list[bool]) -> None:
        """Record this step's token of each row still generating."""
        for i, tok in enumerate(tokens):
            if finished[i]:
                continue
            hist = self.history[i]
            hist.append(tok)
            if len(hist) >= self.n:
                self.followers[i].setdefault(tuple(hist[len(hist) - self.n:-1]), set()).add(tok)


def _pick(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if not cfg.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # smallest set whose mass reaches top_p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return idx.gather(-1, choice).squeeze(-1)


@torch.no_grad()
def target_logits(compressor: MemoryReader, prompts: Sequence[Prompt], targets: Sequence[Sequence[int]], *,
                  prefix_row: Any = None) -> list[torch.Tensor]:
    """Per prompt, the decoder's next-token logits (len(target), vocab), float32, at each token of its
    target, teacher-forced right after the prompt (what the decoder would say there, and how sure it
    is), reading what decoding reads. `prefix_row`: the prompts' shared prefix, already run (`_prefill`)."""
    if len(prompts) != len(targets) or any(len(t) == 0 for t in targets):
        raise InvalidInputError("target_logits needs one non-empty target per prompt")
    dec = compressor.decoder
    if all(p.read_entries is None for p in prompts):  # the prompt and its target in one forward
        forced = []
        for p, target in zip(prompts, targets, strict=True):
            head = dec.embed_ids(torch.tensor(list(target[:-1]), dtype=torch.long, device=dec.device))
            forced.append(replace(p, segments=[*p.segments[:-1], torch.cat([p.segments[-1], head.to(p.segments[-1].dtype)])]))
        with compressor.reading():
            logits = _prefill(compressor, forced, tails=[len(t) for t in targets], prefix_row=prefix_row).logits
        return [x.float() for x in logits]
    # Under a read budget the question's prefill chooses what the target reads: two forwards.
    with compressor.reading():
        logits, cache, mask, positions, view = read_prefill(compressor, prompts, prefix_row)
        forced = max(len(t) for t in targets) - 1
        if forced == 0:
            return [logits[i:i + 1].float() for i in range(len(prompts))]
        # The targets go in one forward after the prompts, right-padded: causal attention keeps every
        # real token from reading a pad.
        ids = torch.zeros(len(prompts), forced, dtype=torch.long, device=dec.device)
        for i, t in enumerate(targets):
            ids[i, :len(t) - 1] = torch.tensor(list(t[:-1]), dtype=torch.long)
        after = _forward(compressor, ids, cache, mask, positions, view)[0]
    return [torch.cat([logits[i:i + 1], after[i, :len(t) - 1]]).float() for i, t in enumerate(targets)]


def _forward(compressor: MemoryReader, ids: torch.Tensor, cache: Any, mask: torch.Tensor | None,
             positions: torch.Tensor, view: Any) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Tokens `ids` (B, T) through the decoder after a prefilled cache (`Prefilled`'s cache, mask, next
    positions and view), each row's at its next positions: (logits (B, T, V), cache, mask)."""
    dec = compressor.decoder
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones(ids.shape[0], ids.shape[1])], dim=1)
    out = dec.model(inputs_embeds=dec.embed_ids(ids), attention_mask=mask,
                    position_ids=positions + torch.arange(ids.shape[1], device=dec.device), **cache_arg(cache),
                    use_cache=True, **({} if view is None else {"kv_view": view}))
    return out.logits, output_cache(out), mask


def _finish_text(tokenizer, ids: list[int], stop: tuple[str, ...]) -> str:
    stop_ids = stop_token_ids(tokenizer)
    ids = [i for i in ids if i not in stop_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def generate_from_prompts(compressor: MemoryReader, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[Answer]:
    """Greedy/sampled decoding of several prompts in one batch."""
    start = time.perf_counter()
    ids: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    prefill = None
    for nxt, finished in _decode_steps(compressor, prompts, cfg):
        if prefill is None:
            prefill = time.perf_counter() - start
        for i, tok in enumerate(nxt.tolist()):
            if not done[i]:
                ids[i].append(tok)
            done[i] = bool(finished[i])
    seconds = time.perf_counter() - start
    tok = compressor.decoder.tokenizer
    return [Answer(_finish_text(tok, ids[i], cfg.stop), p.positions, p.context_positions, p.source_tokens,
                   len(ids[i]), prefill or 0.0, seconds, ids[i]) for i, p in enumerate(prompts)]


def _answer_prompts(compressor: MemoryReader, questions: Sequence[str], contexts: Sequence[Sequence[Context]]
                    ) -> list[Prompt]:
    """The answer prompts of a batch of questions, `contexts[i]` belonging to `questions[i]`."""
    if isinstance(questions, str):
        raise InvalidInputError("pass a list of questions (one question: answer() or stream())")
    if len(questions) != len(contexts):
        raise InvalidInputError(f"{len(questions)} questions but {len(contexts)} context lists: pass one list per question")
    if not questions:
        raise InvalidInputError("at least one question is needed")
    with torch.no_grad():
        return [build_prompt(compressor, ctx, question=q) for q, ctx in zip(questions, contexts, strict=True)]


def answer(compressor: MemoryReader, question: str, contexts: Sequence[Context], **generation) -> Answer:
    """Answer one question from memories and/or raw-text contexts."""
    return answer_many(compressor, [question], [contexts], **generation)[0]


def answer_many(compressor: MemoryReader, questions: Sequence[str], contexts: Sequence[Sequence[Context]],
                **generation) -> list[Answer]:
    """Answer several questions in one batch; `contexts[i]` belongs to `questions[i]`."""
    cfg = GenerationConfig.from_options(generation)
    return generate_from_prompts(compressor, _answer_prompts(compressor, questions, contexts), cfg)


def stream(compressor: MemoryReader, question: str, contexts: Sequence[Context], **generation) -> Iterator[str]:
    """Yield the answer's text piece by piece as tokens are generated."""
    for _, piece in stream_many(compressor, [question], [contexts], **generation):
        yield piece


def stream_many(compressor: MemoryReader, questions: Sequence[str], contexts: Sequence[Sequence[Context]],
                **generation) -> Iterator[tuple[int, str]]:
    """Answer several questions in one batch, yielding (question index, text piece) as each step's
    tokens are generated, so every answer of the batch streams from the first step on."""
    cfg = GenerationConfig.from_options(generation)
    prompts = _answer_prompts(compressor, questions, contexts)
    tok = compressor.decoder.tokenizer
    stop_ids = stop_token_ids(tok)
    rows = [_TextPieces(tok, stop_ids, cfg.stop) for _ in prompts]
    for nxt, _ in _decode_steps(compressor, prompts, cfg):
        for i, token in enumerate(nxt.tolist()):
            if piece := rows[i].add(token):
                yield i, piece
        if all(r.done for r in rows):
            return


class _TextPieces:
    """One answer's text as its tokens arrive: each call gives the text not sent yet."""

    def __init__(self, tokenizer, stop_ids: set[int], stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop_ids, self.stop = tokenizer, stop_ids, stop
        self.ids: list[int] = []
        self.sent = ""
        self.done = False

    def add(self, token: int) -> str:
        """The new text after `token` ("" while nothing new can be sent, and once the answer ended)."""
        if self.done:
            return ""
        if token in self.stop_ids:
            self.done = True
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        cuts = [text.index(s) for s in self.stop if s and s in text]
        if cuts:
            text, self.done = text[: min(cuts)], True
        # Hold back while the last bytes form an incomplete UTF-8 character.
        elif text.endswith("\ufffd"):
            return ""
        if len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


def reconstruct(compressor: MemoryReader, memory: Memory, *, max_new_tokens: int | None = None,
                batch_size: int = 8) -> str:
    """Decode what a memory holds back to text: each piece of a soft prompt in autoencoding mode, a KV
    memory whole in the repeat prompt it was scored with."""
    ids = reconstruct_token_ids(compressor, memory, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return compressor.decoder.tokenizer.decode(ids, skip_special_tokens=True)


def reconstruct_token_ids(compressor: MemoryReader, memory: Memory, *, max_new_tokens: int | None = None,
                          batch_size: int = 8) -> list[int]:
    """Token ids reconstructed from each piece (batched), concatenated: pieces are consecutive
    token ranges of one source, so joining ids (not stripped texts) keeps the spacing."""
    if not isinstance(memory, Memory):
        raise InvalidInputError(f"reconstruct takes a SoftPrompt or KvMemory, got {type(memory).__name__}")
    compressor.check_memory(memory)
    stops = stop_token_ids(compressor.decoder.tokenizer)
    # Copying a text must reproduce its own repeated phrases, so the answers' loop stop is off here.
    config = partial(GenerationConfig, no_repeat_ngram_size=0)
    if isinstance(memory, KvMemory):
        with torch.no_grad():
            prompt = build_prompt(compressor, [memory], mode="repeat")
        cfg = config(max_new_tokens=max_new_tokens or memory.source_tokens + 16)
        return [t for t in generate_from_prompts(compressor, [prompt], cfg)[0].token_ids if t not in stops]
    pieces = list(memory.pieces)
    ids: list[int] = []
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b : b + batch_size]
        with torch.no_grad():
            prompts = [build_prompt(compressor, [_piece_prompt(memory, p)], mode="autoencode") for p in batch]
        budget = max_new_tokens or max(p.source_tokens for p in batch) + 16
        for answer in generate_from_prompts(compressor, prompts, config(max_new_tokens=budget)):
            ids += [t for t in answer.token_ids if t not in stops]
    return ids


def _piece_prompt(prompt: SoftPrompt, piece) -> SoftPrompt:
    rows = prompt.embeddings[piece.position_start : piece.position_end]
    return SoftPrompt(rows, (replace(piece, position_start=0, position_end=rows.shape[0]),), prompt.compressor,
                      prompt.compressor_version, prompt.backbone)
