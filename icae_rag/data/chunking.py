"""Cut token sequences into spans (ICAE) and sentence-aware chunks (E2LLM); every token kept once."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..errors import InvalidInputError

# A sentence ends at . ! ? (optionally closed by quotes/brackets) followed by whitespace, or at a
# blank line; both are where a reader would pause, so chunks stay readable on their own.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


def split_spans(num_tokens: int, span_tokens: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) spans of at most `span_tokens` covering 0..num_tokens."""
    if span_tokens <= 0:
        raise InvalidInputError(f"span_tokens must be positive, got {span_tokens}")
    return [(s, min(s + span_tokens, num_tokens)) for s in range(0, num_tokens, span_tokens)]


def slots_for(span_len: int, ratio: int) -> int:
    """Memory slots for a span: ceil(len / ratio), so short last spans keep the ratio."""
    return max(1, math.ceil(span_len / ratio))


def sentence_boundaries(text: str) -> list[int]:
    """Character offsets where a new sentence starts (always includes 0)."""
    return [0] + [m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)]


def sentence_chunks(
    offsets: list[tuple[int, int]],
    text: str,
    target_tokens: int,
    fits: Callable[[int, int], bool] | None = None,
) -> list[tuple[int, int]]:
    """Pack whole sentences into token chunks of at most `target_tokens`.

    `offsets` are the (char_start, char_end) of each token of `text`. A sentence longer than the
    target is cut at token boundaries. `fits(start, end)` may veto a chunk (for example when the
    sentence encoder would truncate it); a vetoed chunk is halved until it fits.
    """
    if target_tokens <= 0:
        raise InvalidInputError(f"target_tokens must be positive, got {target_tokens}")
    n = len(offsets)
    if n == 0:
        return []
    starts = sentence_boundaries(text)
    # Token index where each sentence starts: the first token that ends after the boundary (BPE
    # tokenizers glue the space before a word to the word, so that token straddles the boundary).
    sentence_token_starts, j = [], 0
    for char_start in starts:
        while j < n and offsets[j][1] <= char_start:
            j += 1
        if j < n and (not sentence_token_starts or sentence_token_starts[-1] != j):
            sentence_token_starts.append(j)
    if not sentence_token_starts or sentence_token_starts[0] != 0:
        sentence_token_starts.insert(0, 0)
    sentences = list(zip(sentence_token_starts, sentence_token_starts[1:] + [n], strict=True))

    chunks: list[tuple[int, int]] = []
    cur_start, cur_end = 0, 0
    for s, e in sentences:
        if e - s > target_tokens:  # an over-long sentence: flush, then cut it into pieces
            if cur_end > cur_start:
                chunks.append((cur_start, cur_end))
            chunks += [(a, min(a + target_tokens, e)) for a in range(s, e, target_tokens)]
            cur_start = cur_end = e
        elif e - cur_start > target_tokens:
            chunks.append((cur_start, cur_end))
            cur_start, cur_end = s, e
        else:
            cur_end = e
    if cur_end > cur_start:
        chunks.append((cur_start, cur_end))
    if fits is None:
        return chunks
    return [piece for chunk in chunks for piece in _halve_until_fits(chunk, fits)]


def _halve_until_fits(chunk: tuple[int, int], fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    start, end = chunk
    if fits(start, end):
        return [chunk]
    if end - start == 1:
        raise InvalidInputError(f"a single token (index {start}) does not fit the encoder")
    mid = (start + end) // 2
    return _halve_until_fits((start, mid), fits) + _halve_until_fits((mid, end), fits)
