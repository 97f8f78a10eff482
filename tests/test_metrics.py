"""Tests for icae_rag.eval.metrics: hand-worked SQuAD, BLEU and bootstrap cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icae_rag.errors import InvalidInputError
from icae_rag.eval.metrics import (
    answer_contained,
    bleu4,
    bootstrap_ci,
    corpus_bleu4,
    exact_match,
    has_repeated_ngram,
    is_abstention,
    normalize_answer,
    paired_ratio_ci,
    token_accuracy,
    token_f1,
)

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat!", "cat"),
        ("  An   apple, a day. ", "apple day"),
        # Articles are removed only as whole words.
        ("Theory of anthems", "theory of anthems"),
        # Punctuation is deleted, not replaced by a space (official SQuAD behaviour).
        ("the U.S.A.", "usa"),
        ("Saint-Denis", "saintdenis"),
        ("A\tthe\nAN", ""),
        ("Beyoncé's", "beyoncés"),
    ],
)
def test_normalize_answer_squad_examples(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# ------------------------------------------------------------------------------ exact match


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0


def test_exact_match_takes_max_over_references() -> None:
    assert exact_match("eiffel tower", ["Louvre", "the  Eiffel tower"]) == 1.0


def test_exact_match_partial_answer_is_wrong() -> None:
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0


# --------------------------------------------------------------------------------- token F1


def test_token_f1_hand_worked() -> None:
    # pred -> [cat, sat]; ref -> [cat, sat, down]; common = 2
    # P = 2/2 = 1, R = 2/3, F1 = 2 * 1 * (2/3) / (1 + 2/3) = (4/3) / (5/3) = 0.8
    assert token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)


def test_token_f1_max_over_references() -> None:
    # "dog" shares nothing (F1 0); "a cat sat down" gives 0.8 as above; "cat" gives
    # P 1/2, R 1/1 -> 2 * 0.5 / 1.5 = 2/3. Max is 0.8.
    assert token_f1("the cat sat", ["dog", "cat", "a cat sat down"]) == pytest.approx(0.8)


def test_token_f1_clips_repeated_tokens() -> None:
    # pred [cat, cat, cat], ref [cat, dog]: common = min(3, 1) = 1
    # P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    assert token_f1("cat cat cat", ["cat dog"]) == pytest.approx(0.4)


def test_token_f1_empty_cases() -> None:
    # "the" and "a" both normalise to "" -> both empty -> 1.0
    assert token_f1("the", ["a"]) == 1.0
    assert token_f1("", ["cat"]) == 0.0
    assert token_f1("cat", [""]) == 0.0


def test_token_f1_no_overlap_is_zero() -> None:
    assert token_f1("blue whale", ["red fox"]) == 0.0


# ------------------------------------------------------------------------ answer contained


def test_answer_contained_respects_token_boundaries() -> None:
    # "10" must not be found inside "100".
    assert answer_contained("It was built in 100 BC", ["10"]) == 0.0
    assert answer_contained("It was built in 100 BC", ["100"]) == 1.0
    assert answer_contained("Parisian cafes", ["Paris"]) == 0.0


def test_answer_contained_multi_token_and_normalised() -> None:
    assert answer_contained("The answer is Paris, France.", ["paris"]) == 1.0
    assert answer_contained("He moved to New York City.", ["dog", "the New York"]) == 1.0


def test_answer_contained_ignores_empty_references() -> None:
    # "The" normalises to "" and must not match everything.
    assert answer_contained("anything at all", ["The", ""]) == 0.0


# ------------------------------------------------------------------------------ abstention


@pytest.mark.parametrize(
    "answer",
    [
        "unanswerable",
        "Unanswerable.",
        "I don't know.",
        "I don\u2019t know",
        "Don't know",
        "This question cannot be answered from the context.",
        "The information is not mentioned in the passage.",
        "No answer",
        "There is not enough information to answer.",
        "The passage does not mention his birthplace.",
        "The context doesn't say.",
        "Insufficient information",
        "I am unable to answer based on the text.",
    ],
)
def test_is_abstention_positives(answer: str) -> None:
    assert is_abstention(answer) is True


@pytest.mark.parametrize(
    "answer",
    [
        "Paris",
        "The answer is 42.",
        "No",
        "I know: it was 1998.",
        "The drink does not contain alcohol.",
        "Nothing was announced",
        "Denmark, not Norway",
        "",
    ],
)
def test_is_abstention_negatives(answer: str) -> None:
    assert is_abstention(answer) is False


# ----------------------------------------------------------------------------------- BLEU-4


def test_bleu4_hand_worked_pair() -> None:
    cand = "the cat sat on the mat".split()
    ref = "the cat is on the mat".split()
    # 1-grams: cand {the:2, cat, sat, on, mat}, clipped matches the:2 cat on mat = 5 of 6
    #          -> p1 = 5/6 (no smoothing for unigrams)
    # 2-grams: cand the-cat cat-sat sat-on on-the the-mat; ref the-cat cat-is is-on on-the
    #          the-mat; matches the-cat on-the the-mat = 3 of 5 -> (3+1)/(5+1) = 2/3
    # 3-grams: cand the-cat-sat cat-sat-on sat-on-the on-the-mat; only on-the-mat matches
    #          = 1 of 4 -> (1+1)/(4+1) = 2/5
    # 4-grams: 3 candidate 4-grams, none match = 0 of 3 -> (0+1)/(3+1) = 1/4
    # product = 5/6 * 2/3 * 2/5 * 1/4 = 20/360 = 1/18; lengths equal -> BP = 1
    # BLEU = (1/18) ** (1/4) ~= 0.48549
    assert bleu4(cand, ref) == pytest.approx((1 / 18) ** 0.25, rel=1e-12)
    assert bleu4(cand, ref) == pytest.approx(0.48549, abs=1e-5)


def test_bleu4_identical_is_exactly_one() -> None:
    for tokens in (["a"], ["a", "b"], [1, 2, 3], list(range(20))):
        # Short perfect candidates have no 4-grams at all: (0+1)/(0+1) = 1, not 0.
        assert bleu4(tokens, tokens) == 1.0


def test_bleu4_totally_wrong_is_zero() -> None:
    assert bleu4([1, 2, 3], [4, 5, 6]) == 0.0


def test_bleu4_reversed_ids() -> None:
    # cand 1 2 3 4, ref 4 3 2 1: p1 = 4/4; no 2/3/4-gram matches:
    # p2 = (0+1)/(3+1) = 1/4, p3 = (0+1)/(2+1) = 1/3, p4 = (0+1)/(1+1) = 1/2
    # BLEU = (1 * 1/4 * 1/3 * 1/2) ** (1/4) = (1/24) ** (1/4) ~= 0.45180
    assert bleu4([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx((1 / 24) ** 0.25, rel=1e-12)


def test_bleu4_clips_repeated_unigrams() -> None:
    # cand "the the the the", ref "the cat": "the" clipped to 1 -> p1 = 1/4
    # 2-grams: 3 x the-the, 0 match -> 1/4; 3-grams 0 of 2 -> 1/3; 4-grams 0 of 1 -> 1/2
    # c = 4 > r = 2 -> BP = 1. BLEU = (1/4 * 1/4 * 1/3 * 1/2) ** (1/4) = (1/96) ** (1/4)
    assert bleu4(["the"] * 4, ["the", "cat"]) == pytest.approx((1 / 96) ** 0.25, rel=1e-12)


def test_bleu4_brevity_penalty() -> None:
    # cand "the cat" is a perfect prefix: p1 = 2/2, p2 = (1+1)/(1+1), p3 = p4 = (0+1)/(0+1)
    # c = 2, r = 6 -> BP = exp(1 - 6/2) = exp(-2) ~= 0.13534
    ref = "the cat sat on the mat".split()
    assert bleu4(["the", "cat"], ref) == pytest.approx(math.exp(-2), rel=1e-12)


def test_bleu4_accepts_numpy_ids() -> None:
    ids = np.array([5, 6, 7, 8, 9])
    assert bleu4(ids, [5, 6, 7, 8, 9]) == 1.0


def test_bleu4_empty_candidate_is_zero() -> None:
    assert bleu4([], [1, 2]) == 0.0


def test_bleu4_empty_reference_raises() -> None:
    with pytest.raises(InvalidInputError, match="reference is empty"):
        bleu4([1, 2], [])


def test_bleu4_rejects_raw_string() -> None:
    with pytest.raises(InvalidInputError, match="sequence of tokens"):
        bleu4("the cat", ["the", "cat"])


# ---------------------------------------------------------------------------- corpus BLEU-4


def test_corpus_bleu4_pools_counts() -> None:
    cands = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]]
    refs = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    # pair 1 (identical): matches 5,4,3,2 of 5,4,3,2
    # pair 2 (last token wrong): 1-grams 4/5, 2-grams 3/4, 3-grams 2/3, 4-grams 1/2
    # pooled: 9/10, 7/8, 5/6, 3/4; no zero count -> no smoothing; c = r = 10 -> BP = 1
    # product = 945/1920 = 63/128 -> BLEU = (63/128) ** (1/4) ~= 0.83759
    assert corpus_bleu4(cands, refs) == pytest.approx((63 / 128) ** 0.25, rel=1e-12)


def test_corpus_bleu4_single_brevity_penalty() -> None:
    # All precisions 1 (4/4, 3/3, 2/2, 1/1); c = 4, r = 8 -> BP = exp(1 - 8/4) = exp(-1)
    assert corpus_bleu4([[1, 2, 3, 4]], [list(range(1, 9))]) == pytest.approx(
        math.exp(-1), rel=1e-12
    )


def test_corpus_bleu4_smooths_only_when_a_count_is_zero() -> None:
    # A single pair with no 4-gram match: smoothing applies, so it equals sentence BLEU.
    cand = "the cat sat on the mat".split()
    ref = "the cat is on the mat".split()
    assert corpus_bleu4([cand], [ref]) == pytest.approx((1 / 18) ** 0.25, rel=1e-12)


def test_corpus_bleu4_length_mismatch_raises() -> None:
    with pytest.raises(InvalidInputError, match="one reference per candidate"):
        corpus_bleu4([[1, 2]], [[1, 2], [3, 4]])


def test_corpus_bleu4_empty_corpus_raises() -> None:
    with pytest.raises(InvalidInputError, match="candidates is empty"):
        corpus_bleu4([], [])


def test_corpus_bleu4_empty_reference_raises() -> None:
    with pytest.raises(InvalidInputError, match=r"references\[1\] is empty"):
        corpus_bleu4([[1], [2]], [[1], []])


# --------------------------------------------------------------------------- token accuracy


def test_token_accuracy_shorter_candidate() -> None:
    # positions 0, 1 match; position 2 differs (3 vs 4); position 3 missing -> 2/4
    assert token_accuracy([1, 2, 3], [1, 2, 4, 5]) == 0.5


def test_token_accuracy_longer_candidate_ignores_extra() -> None:
    assert token_accuracy([1, 2, 3, 9, 9], [1, 2, 3]) == 1.0


def test_token_accuracy_is_positional() -> None:
    # Same tokens shifted by one position: nothing lines up.
    assert token_accuracy([0, 1, 2, 3], [1, 2, 3]) == 0.0


def test_token_accuracy_empty_reference_raises() -> None:
    with pytest.raises(InvalidInputError, match="reference is empty"):
        token_accuracy([1], [])


# ---------------------------------------------------------------------------- bootstrap CI

_COIN_FLIPS = [0.0, 1.0] * 50


def test_bootstrap_ci_is_deterministic_with_seed() -> None:
    # Continuous scores: coin-flip resample means sit on a 0.01 grid, so two seeds could
    # land on the same percentiles and hide a seed that is ignored.
    scores = [0.13, 0.92, 0.47, 0.05, 0.66, 0.31, 0.88, 0.24, 0.71, 0.59, 0.02, 0.97]
    first = bootstrap_ci(scores, seed=123)
    assert bootstrap_ci(scores, seed=123) == first
    assert bootstrap_ci(scores, seed=124) != first
    assert first[0] == pytest.approx(sum(scores) / len(scores))


def test_paired_ratio_ci_resamples_pairs_together() -> None:
    # The same per-item scores in both: every resample's ratio is exactly 1. Resampled apart,
    # two halves-hit samples of 100 would give an interval about +-0.4 wide.
    assert paired_ratio_ci(_COIN_FLIPS, _COIN_FLIPS) == (1.0, 1.0, 1.0)
    # One hit of 50 lost: ratio 49 / 50, an interval that holds it and stays below 1.
    lost = [0.0, *_COIN_FLIPS[1:-1], 0.0]
    ratio, low, high = paired_ratio_ci(lost, _COIN_FLIPS)
    assert ratio == pytest.approx(49 / 50)
    assert 0.9 < low <= ratio <= high <= 1.0


def test_paired_ratio_ci_rejects_what_has_no_ratio() -> None:
    with pytest.raises(InvalidInputError, match="one length"):
        paired_ratio_ci([1.0, 0.0], [1.0])
    with pytest.raises(InvalidInputError, match="sum to zero"):
        paired_ratio_ci([1.0, 0.0], [0.0, 0.0])
    with pytest.raises(InvalidInputError, match="NaN"):
        paired_ratio_ci([1.0, math.nan], [1.0, 1.0])


def test_bootstrap_ci_contains_mean_with_plausible_width() -> None:
    mean, low, high = bootstrap_ci(_COIN_FLIPS)
    assert mean == 0.5
    assert low < mean < high
    # Standard error of a mean of 100 fair coin flips is 0.05, so a 95% interval is
    # roughly 0.5 +- 0.098.
    assert 0.38 < low < 0.45
    assert 0.55 < high < 0.62


def test_bootstrap_ci_lower_confidence_is_narrower() -> None:
    # Same seed -> same resampled means, so the 50% interval nests inside the 95% one.
    _, low95, high95 = bootstrap_ci(_COIN_FLIPS, confidence=0.95)
    _, low50, high50 = bootstrap_ci(_COIN_FLIPS, confidence=0.50)
    assert low95 < low50 < high50 < high95


def test_bootstrap_ci_single_and_constant_values() -> None:
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([0.1] * 30) == (0.1, 0.1, 0.1)


def test_bootstrap_ci_ignores_global_numpy_state() -> None:
    np.random.seed(1)
    first = bootstrap_ci(_COIN_FLIPS)
    np.random.seed(2)
    assert bootstrap_ci(_COIN_FLIPS) == first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": []}, "values is empty"),
        ({"values": [1.0, float("nan")]}, "NaN or infinity"),
        ({"values": [1.0, 2.0], "n_resamples": 0}, "n_resamples must be >= 1"),
        ({"values": [1.0, 2.0], "confidence": 1.0}, "strictly between 0 and 1"),
        ({"values": [1.0, 2.0], "confidence": 0.0}, "strictly between 0 and 1"),
        ({"values": [[1.0, 2.0]]}, "flat sequence"),
    ],
)
def test_bootstrap_ci_errors(kwargs: dict, message: str) -> None:
    values = kwargs.pop("values")
    with pytest.raises(InvalidInputError, match=message):
        bootstrap_ci(values, **kwargs)


# ------------------------------------------------------------------------ answer arg checks


@pytest.mark.parametrize("metric", [exact_match, token_f1, answer_contained])
def test_answer_metrics_reject_empty_references(metric) -> None:
    with pytest.raises(InvalidInputError, match="references is empty"):
        metric("cat", [])


@pytest.mark.parametrize("metric", [exact_match, token_f1, answer_contained])
def test_answer_metrics_reject_bare_string_reference(metric) -> None:
    # Without the check, "cat" vs "cat" would be scored against the letters c, a, t.
    with pytest.raises(InvalidInputError, match="not a single str"):
        metric("cat", "cat")


def test_invalid_input_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        exact_match("cat", [])


# --------------------------------------------------------------------------- generation loops


@pytest.mark.parametrize(("answer", "looped"), [
    ("The answer is: The answer is: The answer is:", True),
    ("the answer is the answer is", False),  # "the answer is the" occurs once
    ("Paris, paris; Paris paris PARIS", True),  # case and punctuation do not hide a loop
    ("Neil Armstrong and Buzz Aldrin landed on 20 July 1969.", False),
    ("", False),
])
def test_has_repeated_ngram(answer: str, looped: bool) -> None:
    assert has_repeated_ngram(answer, 4) is looped


def test_has_repeated_ngram_bad_input() -> None:
    with pytest.raises(InvalidInputError):
        has_repeated_ngram(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        has_repeated_ngram("a b", 0)
