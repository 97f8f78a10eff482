"""Spans and chunks cover every token exactly once and honour the ratio / size limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icae_rag.data.chunking import sentence_chunks, slots_for, split_spans
from icae_rag.errors import InvalidInputError


def _covers_once(spans, n):
    flat = [i for s, e in spans for i in range(s, e)]
    return flat == list(range(n))


@given(n=st.integers(0, 5000), span=st.integers(1, 700))
def test_split_spans_cover_every_token_once(n, span):
    spans = split_spans(n, span)
    assert _covers_once(spans, n)
    assert all(0 < e - s <= span for s, e in spans)


@given(length=st.integers(1, 2048), ratio=st.integers(1, 16))
def test_slots_honour_ratio(length, ratio):
    k = slots_for(length, ratio)
    assert k == math.ceil(length / ratio)
    assert length / k <= ratio


def _word_offsets(text):
    """Whitespace-delimited 'tokens' with char offsets, whitespace attached to the next token."""
    offsets, start = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or (text[i].isspace() and not text[i - 1].isspace()):
            offsets.append((start, i))
            start = i
    return offsets




@given(parts=st.lists(st.tuples(st.text(alphabet="ab c", min_size=1, max_size=60), st.sampled_from([". ", "! ", "\n\n", " "])),
                      min_size=1, max_size=40),
       target=st.integers(1, 40))
def test_sentence_chunks_cover_every_token_once(parts, target):
    text = "".join(a + b for a, b in parts)
    offsets = _word_offsets(text)
    chunks = sentence_chunks(offsets, text, target)
    assert _covers_once(chunks, len(offsets))
    assert all(0 < e - s <= target for s, e in chunks)


def test_sentence_chunks_prefer_sentence_boundaries():
    text = "One two three. Four five six. Seven eight nine."
    offsets = _word_offsets(text)
    chunks = sentence_chunks(offsets, text, target_tokens=6)
    words = [text[offsets[s][0]:offsets[e - 1][1]].strip() for s, e in chunks]
    assert words == ["One two three. Four five six.", "Seven eight nine."]


def test_fits_veto_halves_chunks():
    text = "a b c d e f g h"
    offsets = _word_offsets(text)
    chunks = sentence_chunks(offsets, text, target_tokens=8, fits=lambda s, e: e - s <= 3)
    assert _covers_once(chunks, 8) and all(e - s <= 3 for s, e in chunks)


def test_bad_sizes_raise():
    with pytest.raises(InvalidInputError):
        split_spans(10, 0)
    with pytest.raises(InvalidInputError):
        sentence_chunks([(0, 1)], "a", 0)
