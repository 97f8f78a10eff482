"""LongLLMLingua baseline: offline, scored by our decoder, near the token budget."""

from __future__ import annotations

import socket
import sys
import warnings

import pytest

from conftest import TEXT
from icae_rag.errors import InvalidInputError
from icae_rag.models.backbones import DEFAULT_DECODER, TINY_DECODER, decoder_source

pytest.importorskip("llmlingua")

from icae_rag.eval import longllmlingua  # noqa: E402 (after the skip: it needs llmlingua)
from icae_rag.eval.longllmlingua import LongLLMLinguaBaseline  # noqa: E402

QUESTION = "Who stayed in lunar orbit during Apollo 11?"
PASSAGES = [
    TEXT,
    "The Saturn V rocket stood 110 metres tall and remains the most powerful rocket ever flown "
    "to completion. It was developed at the Marshall Space Flight Center under Wernher von Braun.",
    "Skylab was the first American space station. Three crews lived aboard it in 1973 and 1974, "
    "studying the Sun, the Earth and the effects of long stays in weightlessness on the body.",
    "The Apollo-Soyuz Test Project in 1975 docked an American Apollo capsule with a Soviet Soyuz. "
    "It was the last flight of an Apollo spacecraft and a symbol of detente in the Cold War.",
    "The lunar module Eagle landed in the Sea of Tranquility. Armstrong's first step was watched "
    "on television by an estimated 650 million people around the world in July 1969.",
]


def _near(achieved: int, target: int) -> bool:
    return abs(achieved - target) <= max(3, 0.25 * target)


@pytest.fixture(scope="module")
def lingua():
    return LongLLMLinguaBaseline(decoder_source(TINY_DECODER)[0])


def test_single_passage_is_compressed_near_budget(lingua):
    n = lingua.count_tokens(TEXT)
    text, length = lingua.compress([TEXT], QUESTION, n // 4)
    assert length == lingua.count_tokens(text) < n
    assert text and _near(length, n // 4)


@pytest.mark.parametrize("ratio", [3, 6])
def test_several_passages_are_ranked_and_pruned_near_budget(lingua, ratio):
    n = lingua.count_tokens("\n\n".join(PASSAGES))
    text, length = lingua.compress(PASSAGES, QUESTION, n // ratio)
    assert length == lingua.count_tokens(text) < n
    assert _near(length, n // ratio)


def test_within_budget_is_returned_unchanged(lingua):
    text, length = lingua.compress(PASSAGES[:2], QUESTION, 10_000)
    assert text == "\n\n".join(PASSAGES[:2]) and length == lingua.count_tokens(text)


def test_iterative_windows_work_with_transformers_caches(lingua):
    # small windows make llmlingua carry its KV cache across segments (a DynamicCache in transformers 5)
    long_text = " ".join(PASSAGES)
    n = lingua.count_tokens(long_text)
    out = lingua._lingua.compress_prompt([long_text], question=QUESTION, target_token=n // 4, iterative_size=48,
                                         use_context_level_filter=False, **longllmlingua._DEFAULTS)
    assert lingua.count_tokens(out["compressed_prompt"]) < 0.6 * n


def test_the_decoder_gets_no_deprecated_cache_keyword(lingua):
    # transformers 5.24 renamed past_key_values to cache and drops the old name in 5.40: a warning
    # now is an error on a release pyproject allows.
    long_text = " ".join(PASSAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        lingua._lingua.compress_prompt([long_text], question=QUESTION, target_token=lingua.count_tokens(long_text) // 4,
                                       iterative_size=48, use_context_level_filter=False, **longllmlingua._DEFAULTS)


def test_offline_and_tiktoken_restored(monkeypatch):
    import tiktoken

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    original = tiktoken.encoding_for_model
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    lingua = LongLLMLinguaBaseline(decoder_source(TINY_DECODER)[0])
    lingua.compress(PASSAGES, QUESTION, 40)
    assert tiktoken.encoding_for_model is original
    # llmlingua's own counts are in decoder tokens, not gpt-3.5's
    assert lingua._lingua.oai_tokenizer.encode(TEXT) == lingua._lingua.tokenizer(TEXT, add_special_tokens=False).input_ids


@pytest.mark.parametrize("passages, question, target", [
    (TEXT, QUESTION, 10), (PASSAGES, "  ", 10), (PASSAGES, QUESTION, 0), (PASSAGES, QUESTION, 2.5),
])
def test_rejects_bad_arguments(lingua, passages, question, target):
    with pytest.raises(InvalidInputError):
        lingua.compress(passages, question, target)


def test_missing_llmlingua_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llmlingua", None)
    longllmlingua._compressor_class.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install llmlingua"):
            LongLLMLinguaBaseline(decoder_source(TINY_DECODER)[0])
    finally:
        longllmlingua._compressor_class.cache_clear()


@pytest.mark.integration
def test_real_decoder_hits_the_budget():
    lingua = LongLLMLinguaBaseline(decoder_source(DEFAULT_DECODER)[0])
    for passages, ratio in (([TEXT], 4), (PASSAGES, 4), (PASSAGES, 8)):
        n = lingua.count_tokens("\n\n".join(passages))
        text, length = lingua.compress(passages, QUESTION, n // ratio)
        assert _near(length, n // ratio), (length, n // ratio, text)
