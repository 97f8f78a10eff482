"""Answer from memories: the prompt's pieces extend the decoder's cache in order, then decode.

A prompt is a chat prefix, the contexts (separated by blank lines), a mode marker and the question.
Text and input-level soft prompts are prefilled; KV memories (kvzip) are appended to the cache
directly, their keys re-rotated to where they stand. Every answer, raw or compressed, goes through
`build_prompt` and `_decode_steps`, so the raw-text baseline and the compressed modes differ only in
what stands in the context block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from . import kv_attention
from .errors import BackboneMismatchError, InvalidInputError
from .hf_compat import cache_arg, output_cache
from .kv_attention import KvView
from .kv_memory import KvMemory, token_ids_sha256
from .memory import Memory
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
# "repeat" keeps the answer prompt's prefix and asks for the context after it: KV memories are
# computed under that prefix, so they are scored and reconstructed in this layout.
REPEAT_REQUEST = "Repeat the context word for word."
MODES = (*INSTRUCTIONS, "repeat")
Context = Memory | str
# Training passes soft rows as tensors (with grad); users pass memories or raw strings.
TrainingContext = Memory | str | torch.Tensor


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
    """Decoder inputs for one question, in order: the prefix's embeddings, then embeddings (T, d) and
    KV memories; plus what the contexts cost."""

    segments: list[torch.Tensor | KvMemory]
    soft_tokens: int
    source_tokens: int

    @property
    def positions(self) -> int:
        """Decoder positions the prompt takes (a KV memory counts its kept entries' token-equivalents)."""
        return sum(s.num_soft_tokens if isinstance(s, KvMemory) else s.shape[0] for s in self.segments)

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


def build_prompt(compressor: Compressor, contexts: Sequence[TrainingContext], *, mode: str = "answer",
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
    dec = compressor.decoder
    contexts = compressor.budget_contexts(contexts)
    before, after = prompt_texts(dec.tokenizer, mode, question)
    prefix_sha = None
    segments, soft, source = [dec.embed_text(before)], 0, 0
    separator = dec.embed_text("\n\n")
    for i, ctx in enumerate(contexts):
        if i:
            segments.append(separator)
        if isinstance(ctx, KvMemory):
            compressor.check_soft_prompt(ctx)
            prefix_sha = prefix_sha or token_ids_sha256(dec.tokenizer(before, add_special_tokens=False)["input_ids"])
            if ctx.prefix_sha256 != prefix_sha:
                raise BackboneMismatchError(
                    f"this KV memory was computed after another prompt prefix than the {mode!r} prompt's: "
                    "KV memories are read in 'answer' and 'repeat' prompts of the icae-rag version that made them; "
                    "compress the text again")
            segments.append(ctx)
        elif isinstance(ctx, SoftPrompt):
            compressor.check_soft_prompt(ctx)
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
        soft += ctx.num_soft_tokens
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


@torch.no_grad()
def _decode_steps(compressor: Compressor, prompts: Sequence[Prompt], cfg: GenerationConfig
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next token ids (B,), finished mask (B,)) per step; KV cache, left-padded batch."""
    dec = compressor.decoder
    model = dec.model
    b = len(prompts)
    stop_ids = torch.tensor(sorted(stop_token_ids(dec.tokenizer)), device=dec.device)
    generator = None
    if cfg.do_sample:
        generator = torch.Generator(device=dec.device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    finished = torch.zeros(b, dtype=torch.bool, device=dec.device)
    repeats = _NgramBan(b, cfg.no_repeat_ngram_size) if cfg.no_repeat_ngram_size else None
    with compressor.decoding():
        logits, cache, mask, positions, view = _prefill(compressor, prompts)
        extra = {} if view is None else {"kv_view": view}
        for _ in range(cfg.max_new_tokens):
            logits = logits.float()
            if repeats is not None:
                logits = repeats.mask(logits)
            nxt = _pick(logits, cfg, generator)
            nxt = torch.where(finished, torch.full_like(nxt, int(stop_ids[0])), nxt)
            if repeats is not None:
                repeats.add(nxt.tolist(), finished.tolist())
            finished = finished | torch.isin(nxt, stop_ids)
            yield nxt, finished
            if bool(finished.all()):
                return
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            out = model(inputs_embeds=dec.embed_ids(nxt[:, None]), attention_mask=mask, position_ids=positions,
                        **cache_arg(cache), use_cache=True, **extra)
            logits, cache, positions = out.logits[:, -1], output_cache(out), positions + 1


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


class Prefilled(NamedTuple):
    """The decoder's state after the prompts: last logits (B, V) (with `tails`: per prompt its last
    positions' logits (tail, V)), cache, 2-D mask or None, next positions (B, 1), KvView or None."""

    logits: torch.Tensor | list[torch.Tensor]
    cache: Any
    mask: torch.Tensor | None
    positions: torch.Tensor
    view: KvView | None


def _prefill(compressor: Compressor, prompts: Sequence[Prompt], tails: Sequence[int] | None = None) -> Prefilled:
    """Run the prompts through the decoder. Prompts of embeddings only go in one left-padded batch.
    Prompts with KV memories take two forwards: the shared prefix, then every prompt's text after it
    (separators, mode marker, question) at once, each token at its own position, reading the memories
    laid in the cache before it (a KvView masks by position, so the text can follow all memories in
    the cache). With `tails`, the logits of prompt i's last `tails[i]` positions are kept."""
    dec = compressor.decoder
    explicit, tails = tails, [1] * len(prompts) if tails is None else list(tails)
    if not any(p.has_memories for p in prompts):
        rows = [p.embeddings for p in prompts]
        b, t = len(rows), max(r.shape[0] for r in rows)
        x = rows[0].new_zeros(b, t, rows[0].shape[-1])
        mask = torch.zeros(b, t, dtype=torch.long, device=dec.device)
        for i, r in enumerate(rows):
            x[i, t - r.shape[0]:] = r
            mask[i, t - r.shape[0]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = dec.model(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=max(tails))
        logits = out.logits[:, -1] if explicit is None else [out.logits[i, out.logits.shape[1] - n:]
                                                            for i, n in enumerate(tails)]
        return Prefilled(logits, output_cache(out), mask, positions[:, -1:] + 1, None)
    kv_attention.require(dec.model)
    prefix = prompts[0].segments[0]
    shared = _extend(dec, _RowCache.empty(), prefix)[1]
    rows, texts = [], []
    for p in prompts:
        row = shared if p.segments[0].shape == prefix.shape and torch.equal(p.segments[0], prefix) \
            else _extend(dec, _RowCache.empty(), p.segments[0])[1]
        text, text_positions = [], []
        for seg in p.segments[1:]:
            if isinstance(seg, KvMemory):
                row = _extend(dec, row, seg)[1]
            else:
                text.append(seg)
                text_positions.append(torch.arange(row.position, row.position + seg.shape[0], device=dec.device))
                row = replace(row, position=row.position + seg.shape[0])
        rows.append(row)
        texts.append((torch.cat(text), torch.cat(text_positions)))
    # A prompt ends with embeddings (the mode marker and the question), so every row has text.
    lengths = [t.shape[0] for t, _ in texts]
    t = max(lengths)
    x = texts[0][0].new_zeros(len(rows), t, texts[0][0].shape[-1])
    query_positions = torch.zeros(len(rows), t, dtype=torch.long, device=dec.device)
    real = torch.zeros(len(rows), t, dtype=torch.bool, device=dec.device)
    for i, (embeddings, positions) in enumerate(texts):
        n = embeddings.shape[0]
        x[i, :n], query_positions[i, :n], real[i, :n] = embeddings, positions, True
        query_positions[i, n:] = positions[-1]  # padding: reads what the row's last token reads, read by none
    cache, next_positions, valid, columns = _stack_rows(dec, rows)
    heads = valid[0].shape[1]
    view = KvView(valid=[torch.cat([v, real[:, None].expand(-1, heads, -1)], dim=2) for v in valid],
                  positions=[torch.cat([p, query_positions[:, None].expand(-1, heads, -1)], dim=2) for p in columns],
                  query_positions=query_positions)
    keep = sorted({j for n, tail in zip(lengths, tails, strict=True) for j in range(n - tail, n)})
    out = dec.model(inputs_embeds=x, position_ids=query_positions, **cache_arg(cache), use_cache=True,
                    logits_to_keep=torch.tensor(keep, device=dec.device), kv_view=view)
    at = {j: k for k, j in enumerate(keep)}
    if explicit is None:
        logits = torch.stack([out.logits[i, at[n - 1]] for i, n in enumerate(lengths)])
    else:
        logits = [out.logits[i, at[n - tail]:at[n - 1] + 1] for i, (n, tail) in enumerate(zip(lengths, tails, strict=True))]
    return Prefilled(logits, output_cache(out), None, next_positions, KvView(valid=view.valid))


@dataclass
class _RowCache:
    """One prompt's cache while it is built: per layer keys/values (kv_heads, columns, head_dim), which
    columns each head may read and their rotary positions (kv_heads, columns), and the next rotary
    position. A KV memory is padded to its fullest head per layer, so layers differ in width."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: list[torch.Tensor]
    position: int
    positions: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls) -> _RowCache:
        return cls([], [], [], 0)

    @property
    def columns(self) -> list[int]:
        """Cache columns of each layer."""
        return [k.shape[1] for k in self.keys]


def _extend(dec, row: _RowCache, segment: torch.Tensor | KvMemory) -> tuple[torch.Tensor | None, _RowCache]:
    """The row's cache after `segment`: a KV memory is appended, embeddings are prefilled."""
    if isinstance(segment, KvMemory):
        columns = segment.cache_tensors(row.position - segment.prefix_tokens, kv_attention.rotary(dec.model),
                                        dec.dtype, dec.device)
        if row.keys:
            columns = [[torch.cat([a, b], dim=1) for a, b in zip(old, new, strict=True)]
                       for old, new in zip((row.keys, row.values, row.valid, row.positions), columns, strict=True)]
        k, v, ok, pos = columns
        return None, _RowCache(k, v, ok, row.position + segment.source_tokens, pos)
    return _extend_rows(dec, [row], [segment])[0]


def _extend_rows(dec, rows: list[_RowCache], segments: list[torch.Tensor]) -> list[tuple[torch.Tensor, _RowCache]]:
    """Prefill `segments[i]` (T_i, d) after `rows[i]` in one forward: (last logits, extended row) per row.

    The rows' caches are left-padded into one (padding masked by the KvView) and the inputs are
    right-padded: causal attention keeps every real token from reading a pad, and each row keeps only
    its own columns afterwards. All rows have a cache, or none does (the prefix).
    """
    from transformers import DynamicCache

    lengths = [s.shape[0] for s in segments]
    t = max(lengths)
    x = segments[0].new_zeros(len(rows), t, segments[0].shape[-1])
    for i, s in enumerate(segments):
        x[i, : s.shape[0]] = s
    positions = torch.tensor([[r.position] for r in rows], device=dec.device) + torch.arange(t, device=dec.device)
    if rows[0].keys:
        cache, _, valid, _ = _stack_rows(dec, rows)
        view = KvView(valid=valid)
    else:
        cache, view = DynamicCache(config=dec.model.config), KvView()
    last = sorted({n - 1 for n in lengths})
    out = dec.model(inputs_embeds=x, position_ids=positions, **cache_arg(cache), use_cache=True,
                    logits_to_keep=torch.tensor(last, device=dec.device), kv_view=view)
    layers = output_cache(out).layers
    extended = []
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        keys, values, valid, columns = [], [], [], []
        for j, layer in enumerate(layers):
            width = layer.keys.shape[2] - t  # the padded cache's columns before this forward
            start = width - (row.keys[j].shape[1] if row.keys else 0)
            keys.append(layer.keys[i, :, start : width + n])
            values.append(layer.values[i, :, start : width + n])
            heads = layer.keys.shape[1]
            new = torch.ones(heads, n, dtype=torch.bool, device=dec.device)
            at = positions[i, :n].expand(heads, -1)
            valid.append(torch.cat([row.valid[j], new], dim=1) if row.valid else new)
            columns.append(torch.cat([row.positions[j], at], dim=1) if row.positions else at)
        extended.append((out.logits[i, last.index(n - 1)],
                         _RowCache(keys, values, valid, row.position + n, columns)))
    return extended


def _stack_rows(dec, rows: list[_RowCache]
                ) -> tuple[Any, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Left-pad per-prompt caches into one batch cache: (cache, next positions (B, 1), and per layer
    each column's validity and rotary position (B, kv_heads, columns))."""
    from transformers import DynamicCache

    cache = DynamicCache(config=dec.model.config)
    valid, columns = [], []
    for layer in range(len(rows[0].keys)):
        width = max(r.keys[layer].shape[1] for r in rows)
        keys = torch.stack([_left_pad(r.keys[layer], width) for r in rows])
        values = torch.stack([_left_pad(r.values[layer], width) for r in rows])
        valid.append(torch.stack([_left_pad(r.valid[layer], width) for r in rows]))
        columns.append(torch.stack([_left_pad(r.positions[layer], width) for r in rows]))
        cache.update(keys, values, layer)
    positions = torch.tensor([[r.position] for r in rows], device=dec.device)
    return cache, positions, valid, columns


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim 1 on the left with zeros (False) to `width` columns."""
    pad = width - t.shape[1]
    return t if pad == 0 else torch.cat([t.new_zeros(t.shape[0], pad, *t.shape[2:]), t], dim=1)


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


def generate_from_prompts(compressor: Compressor, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[Answer]:
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
    return [Answer(_finish_text(tok, ids[i], cfg.stop), p.positions, p.soft_tokens, p.source_tokens,
                   len(ids[i]), prefill or 0.0, seconds, ids[i]) for i, p in enumerate(prompts)]


@torch.no_grad()
def target_logits(compressor: Compressor, prompts: Sequence[Prompt], targets: Sequence[Sequence[int]]
                  ) -> list[torch.Tensor]:
    """Per prompt, the decoder's next-token logits (len(target), vocab), float32, at each token of its
    target, teacher-forced right after the prompt (what the decoder would say there, and how sure it is)."""
    if len(prompts) != len(targets) or any(len(t) == 0 for t in targets):
        raise InvalidInputError("target_logits needs one non-empty target per prompt")
    dec = compressor.decoder
    forced = []
    for p, target in zip(prompts, targets, strict=True):
        head = dec.embed_ids(torch.tensor(list(target[:-1]), dtype=torch.long, device=dec.device))
        forced.append(replace(p, segments=[*p.segments[:-1], torch.cat([p.segments[-1], head.to(p.segments[-1].dtype)])]))
    with compressor.decoding():
        logits = _prefill(compressor, forced, tails=[len(t) for t in targets]).logits
    return [x.float() for x in logits]


def _answer_prompts(compressor: Compressor, questions: Sequence[str], contexts: Sequence[Sequence[Context]]
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


def answer(compressor: Compressor, question: str, contexts: Sequence[Context], **generation) -> Answer:
    """Answer one question from soft prompts and/or raw-text contexts."""
    return answer_many(compressor, [question], [contexts], **generation)[0]


def answer_many(compressor: Compressor, questions: Sequence[str], contexts: Sequence[Sequence[Context]],
                **generation) -> list[Answer]:
    """Answer several questions in one batch; `contexts[i]` belongs to `questions[i]`."""
    cfg = GenerationConfig.from_options(generation)
    return generate_from_prompts(compressor, _answer_prompts(compressor, questions, contexts), cfg)


def stream(compressor: Compressor, question: str, contexts: Sequence[Context], **generation) -> Iterator[str]:
    """Yield the answer's text piece by piece as tokens are generated."""
    for _, piece in stream_many(compressor, [question], [contexts], **generation):
        yield piece


def stream_many(compressor: Compressor, questions: Sequence[str], contexts: Sequence[Sequence[Context]],
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


def reconstruct(compressor: Compressor, soft_prompt: Memory, *, max_new_tokens: int | None = None,
                batch_size: int = 8) -> str:
    """Decode what a memory holds back to text: each soft-prompt piece in autoencoding mode, a KV
    memory whole in the repeat prompt it was scored with."""
    ids = reconstruct_token_ids(compressor, soft_prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return compressor.decoder.tokenizer.decode(ids, skip_special_tokens=True)


def reconstruct_token_ids(compressor: Compressor, soft_prompt: Memory, *, max_new_tokens: int | None = None,
                          batch_size: int = 8) -> list[int]:
    """Token ids reconstructed from each piece (batched), concatenated: pieces are consecutive
    token ranges of one source, so joining ids (not stripped texts) keeps the spacing."""
    if not isinstance(soft_prompt, Memory):
        raise InvalidInputError(f"reconstruct takes a SoftPrompt or KvMemory, got {type(soft_prompt).__name__}")
    compressor.check_soft_prompt(soft_prompt)
    stops = stop_token_ids(compressor.decoder.tokenizer)
    # Copying a text must reproduce its own repeated phrases, so the answers' loop stop is off here.
    config = partial(GenerationConfig, no_repeat_ngram_size=0)
    if isinstance(soft_prompt, KvMemory):
        with torch.no_grad():
            prompt = build_prompt(compressor, [soft_prompt], mode="repeat")
        cfg = config(max_new_tokens=max_new_tokens or soft_prompt.source_tokens + 16)
        return [t for t in generate_from_prompts(compressor, [prompt], cfg)[0].token_ids if t not in stops]
    pieces = list(soft_prompt.pieces)
    ids: list[int] = []
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b : b + batch_size]
        with torch.no_grad():
            prompts = [build_prompt(compressor, [_piece_prompt(soft_prompt, p)], mode="autoencode") for p in batch]
        budget = max_new_tokens or max(p.source_tokens for p in batch) + 16
        for answer in generate_from_prompts(compressor, prompts, config(max_new_tokens=budget)):
            ids += [t for t in answer.token_ids if t not in stops]
    return ids


def _piece_prompt(prompt: SoftPrompt, piece) -> SoftPrompt:
    rows = prompt.embeddings[piece.slot_start : piece.slot_end]
    return SoftPrompt(rows, (replace(piece, slot_start=0, slot_end=rows.shape[0]),), prompt.compressor,
                      prompt.compressor_version, prompt.backbone)
