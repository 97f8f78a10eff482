"""Answer-quality and reconstruction metrics: SQuAD EM/F1, containment, abstention, BLEU-4."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np

from icae_rag.errors import InvalidInputError

__all__ = [
    "answer_contained",
    "bleu4",
    "bootstrap_ci",
    "corpus_bleu4",
    "exact_match",
    "is_abstention",
    "normalize_answer",
    "paired_ratio_ci",
    "token_accuracy",
    "token_f1",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MAX_ORDER = 4
# Upper bound on indices drawn per numpy call, so a large sample cannot allocate
# n_resamples * len(values) integers at once.
_MAX_DRAWS_PER_CHUNK = 1_000_000

# Phrases a reader model uses to decline. Negations are tied to a word about the source
# ("the passage does not mention") where the bare phrase would also match real answers
# ("the drink does not contain alcohol").
_ABSTENTION_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        r"\bunanswerable\b",
        r"\bnot answerable\b",
        r"\b(?:i|we) (?:do not|don't|dont|cannot|can't|can not) (?:know|tell|say|determine)\b",
        r"^(?:do not|don't|dont) know\b",
        r"\b(?:cannot|can't|can not|could not|couldn't) be (?:answered|determined|found)\b",
        r"\b(?:cannot|can't|can not) answer\b",
        r"\b(?:unable|not able|not possible|impossible) to (?:answer|determine|tell|say)\b",
        r"\bnot (?:mentioned|stated|specified|provided)\b",
        r"\b(?:context|passage|text|document|article|source|paragraph)s? "
        r"(?:does not|doesn't|do not|don't|did not|didn't) "
        r"(?:say|mention|state|specify|contain|provide|include|answer)\b",
        r"\bno answer\b",
        r"\b(?:not enough|insufficient|no relevant|no) (?:information|context)\b",
    )
)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_answers(prediction: str, references: Sequence[str]) -> None:
    if not isinstance(prediction, str):
        raise InvalidInputError(
            f"prediction must be a str, got {type(prediction).__name__}; pass the answer text."
        )
    # A bare string is a Sequence[str] too, but scoring against its characters is a bug.
    if isinstance(references, str):
        raise InvalidInputError(
            "references must be a list of reference answers, not a single str; "
            "wrap it as [reference]."
        )
    if len(references) == 0:
        raise InvalidInputError(
            "references is empty; pass at least one reference answer "
            "(score unanswerable questions with is_abstention instead)."
        )
    for i, reference in enumerate(references):
        if not isinstance(reference, str):
            raise InvalidInputError(
                f"references[{i}] must be a str, got {type(reference).__name__}; "
                "pass reference answers as text."
            )


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    _check_answers(prediction, references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def _f1_single(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    # SQuAD v2 convention: an empty answer only matches an empty answer.
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD bag-of-tokens F1 of the normalised answers, maximised over references."""
    _check_answers(prediction, references)
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1_single(pred_tokens, normalize_answer(ref).split()) for ref in references)


def answer_contained(prediction: str, references: Sequence[str]) -> float:
    """1.0 if a normalised non-empty reference occurs in the prediction on token boundaries."""
    _check_answers(prediction, references)
    # Space padding makes the substring test respect token edges: "10" is not in "100".
    padded_pred = f" {normalize_answer(prediction)} "
    for ref in references:
        norm_ref = normalize_answer(ref)
        # An empty reference would be "contained" in every prediction.
        if norm_ref and f" {norm_ref} " in padded_pred:
            return 1.0
    return 0.0


def has_repeated_ngram(prediction: str, n: int = 4) -> bool:
    """True if some n words occur twice in the answer (a generation loop); lowercased, punctuation
    dropped, articles kept: "The answer is: the answer is" repeats "the answer is"."""
    if not isinstance(prediction, str):
        raise InvalidInputError(
            f"prediction must be a str, got {type(prediction).__name__}; pass the answer text."
        )
    if n < 1:
        raise InvalidInputError(f"n must be at least 1, got {n}")
    words = "".join(ch for ch in prediction.lower() if ch not in _PUNCTUATION).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def is_abstention(prediction: str) -> bool:
    """True if the answer says the context does not contain the answer (SQuAD v2 no-answer)."""
    if not isinstance(prediction, str):
        raise InvalidInputError(
            f"prediction must be a str, got {type(prediction).__name__}; pass the answer text."
        )
    # Not normalize_answer: it drops apostrophes and articles that the phrases rely on;
    # only curly quotes and spacing are unified.
    text = " ".join(prediction.lower().replace("\u2019", "'").split())
    return any(pattern.search(text) for pattern in _ABSTENTION_PATTERNS)


def _as_tokens(name: str, tokens: Sequence[int | str]) -> tuple[int | str, ...]:
    # A str would silently be scored character by character.
    if isinstance(tokens, (str, bytes)):
        raise InvalidInputError(
            f"{name} must be a sequence of tokens, not a {type(tokens).__name__}; "
            "split it first, e.g. text.split() or tokenizer(text).input_ids."
        )
    # Tensor elements hash by identity, so equal ids would never match; tolist() yields
    # plain Python ints for numpy arrays and torch tensors alike.
    if hasattr(tokens, "tolist"):
        tokens = tokens.tolist()
    return tuple(tokens)


def _clipped_counts(
    candidate: tuple[int | str, ...], reference: tuple[int | str, ...]
) -> tuple[list[int], list[int]]:
    matched: list[int] = []
    totals: list[int] = []
    for n in range(1, _MAX_ORDER + 1):
        cand_ngrams = Counter(candidate[i : i + n] for i in range(len(candidate) - n + 1))
        ref_ngrams = Counter(reference[i : i + n] for i in range(len(reference) - n + 1))
        matched.append(sum((cand_ngrams & ref_ngrams).values()))
        totals.append(max(len(candidate) - n + 1, 0))
    return matched, totals


def _bleu_from_counts(
    matched: Sequence[int],
    totals: Sequence[int],
    cand_len: int,
    ref_len: int,
    *,
    smooth: bool,
) -> float:
    # Without a single matching unigram there is nothing to smooth towards.
    if cand_len == 0 or matched[0] == 0:
        return 0.0
    # Exact rational product so that a perfect match yields exactly 1.0.
    product = Fraction(matched[0], totals[0])
    for m, t in zip(matched[1:], totals[1:], strict=True):
        # Lin & Och (2004) add-one for n > 1: keeps short or near-miss candidates
        # from collapsing to 0 because a single higher-order precision is zero.
        product *= Fraction(m + 1, t + 1) if smooth else Fraction(m, t)
    geometric_mean = float(product) ** (1.0 / _MAX_ORDER)
    brevity_penalty = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
    return brevity_penalty * geometric_mean


def _reference_tokens(name: str, reference: Sequence[int | str], why: str) -> tuple[int | str, ...]:
    """The reference's tokens; an empty reference is refused, saying why the metric needs one."""
    ref = _as_tokens(name, reference)
    if not ref:
        raise InvalidInputError(f"{name} is empty; {why}. Drop the example or pass its reference.")
    return ref


def bleu4(candidate: Sequence[int | str], reference: Sequence[int | str]) -> float:
    """Sentence BLEU-4 against one reference, with add-one smoothing for n-gram orders > 1."""
    cand = _as_tokens("candidate", candidate)
    ref = _reference_tokens("reference", reference, "BLEU needs at least one reference token")
    if not cand:
        return 0.0
    matched, totals = _clipped_counts(cand, ref)
    return _bleu_from_counts(matched, totals, len(cand), len(ref), smooth=True)


def corpus_bleu4(
    candidates: Sequence[Sequence[int | str]],
    references: Sequence[Sequence[int | str]],
) -> float:
    """Corpus BLEU-4: pooled clipped n-gram counts and one brevity penalty over all pairs."""
    if len(candidates) != len(references):
        raise InvalidInputError(
            f"got {len(candidates)} candidates but {len(references)} references; "
            "pass exactly one reference per candidate."
        )
    if len(candidates) == 0:
        raise InvalidInputError("candidates is empty; pass at least one candidate/reference pair.")
    matched = [0] * _MAX_ORDER
    totals = [0] * _MAX_ORDER
    cand_len = 0
    ref_len = 0
    for i, (candidate, reference) in enumerate(zip(candidates, references, strict=True)):
        cand = _as_tokens(f"candidates[{i}]", candidate)
        ref = _reference_tokens(f"references[{i}]", reference, "BLEU needs at least one reference token")
        pair_matched, pair_totals = _clipped_counts(cand, ref)
        matched = [a + b for a, b in zip(matched, pair_matched, strict=True)]
        totals = [a + b for a, b in zip(totals, pair_totals, strict=True)]
        cand_len += len(cand)
        ref_len += len(ref)
    # Pooled counts are rarely zero, so smooth only when one would zero the score.
    smooth = any(m == 0 for m in matched[1:])
    return _bleu_from_counts(matched, totals, cand_len, ref_len, smooth=smooth)


def token_accuracy(candidate: Sequence[int | str], reference: Sequence[int | str]) -> float:
    """Fraction of reference positions where the candidate has the same token."""
    cand = _as_tokens("candidate", candidate)
    ref = _reference_tokens("reference", reference, "token accuracy is a fraction of reference positions")
    # zip stops at the shorter sequence: missing candidate positions count as wrong,
    # extra candidate tokens past the reference are ignored.
    correct = sum(c == r for c, r in zip(cand, ref, strict=False))
    return correct / len(ref)


def paired_ratio_ci(
    values: Sequence[float],
    reference: Sequence[float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(ratio, low, high): mean(values) / mean(reference), per-item pairs resampled together (bootstrap)."""
    arr, ref = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if arr.ndim != 1 or arr.shape != ref.shape or arr.size == 0:
        raise InvalidInputError(f"values and reference must be two non-empty flat sequences of one length each, "
                                f"got shapes {arr.shape} and {ref.shape}; pass one score per item in each.")
    if not (np.all(np.isfinite(arr)) and np.all(np.isfinite(ref))):
        raise InvalidInputError("values or reference contains NaN or infinity; drop or fix those scores first.")
    if ref.sum() <= 0:
        raise InvalidInputError("the reference scores sum to zero or less, so there is no ratio to estimate.")
    ratios = np.empty(n_resamples, dtype=float)
    for rows, indices in _resamples(arr.size, n_resamples, seed):
        with np.errstate(divide="ignore", invalid="ignore"):  # a resample with no reference hit: ratio inf or nan
            ratios[rows] = arr[indices].sum(axis=1) / ref[indices].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(ratios, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(arr.sum() / ref.sum()), float(low), float(high)


def bootstrap_ci(
    values: Sequence[float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): percentile-bootstrap confidence interval of the mean."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise InvalidInputError(
            f"values must be a flat sequence of numbers, got shape {arr.shape}; flatten it first."
        )
    if arr.size == 0:
        raise InvalidInputError("values is empty; pass at least one per-example score.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(
            "values contains NaN or infinity; drop or fix those scores before bootstrapping."
        )
    if n_resamples < 1:
        raise InvalidInputError(f"n_resamples must be >= 1, got {n_resamples}; use e.g. 1000.")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(
            f"confidence must lie strictly between 0 and 1, got {confidence}; use e.g. 0.95."
        )
    # Every resample of a constant sample is that constant; return it exactly rather than
    # a float-summation approximation of it.
    if np.all(arr == arr[0]):
        v = float(arr[0])
        return v, v, v
    means = np.empty(n_resamples, dtype=float)
    for rows, indices in _resamples(arr.size, n_resamples, seed):
        means[rows] = arr[indices].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(arr.mean()), float(low), float(high)


def _resamples(n: int, n_resamples: int, seed: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Bootstrap draws of `n` items in chunks: (which resamples, their item indices), so a large sample
    never draws more than _MAX_DRAWS_PER_CHUNK indices at once."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_resamples)
        yield slice(start, stop), rng.integers(0, n, size=(stop - start, n))
