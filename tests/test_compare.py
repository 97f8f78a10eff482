"""Tests for icae_rag.eval.compare: lead-ins, the gold answer's likelihood where the decoder puts its
answer, and paired comparisons (retention, flips, intervals) worked by hand."""

from __future__ import annotations

import pytest
import torch

from conftest import TEXT
from icae_rag.decoding import build_prompt, target_logits
from icae_rag.errors import InvalidInputError
from icae_rag.eval.compare import (
    agreement_logliks,
    answer_logliks,
    answer_targets,
    compare,
    compare_modes,
    comparison_markdown,
    lead_in,
)

# --------------------------------------------------------------------------- lead-ins


@pytest.mark.parametrize(
    ("answers", "reference", "expected"),
    [
        # The decoder's lead-in is kept and the space before the gold moves to the gold.
        (["2"], "The exit status of gzip is 2.", ("The exit status of gzip is", " 2")),
        # Case-insensitive; the gold is returned as the dataset writes it.
        (["Lempel-Ziv"], "It uses lempel-ziv coding.", ("It uses", " Lempel-Ziv")),
        # The earliest gold wins; at one start the longer one does.
        (["-c", "--stdout"], "Use --stdout or -c.", ("Use", " --stdout")),
        (["gunzip", "gunzip -c"], "gunzip -c does it", ("", "gunzip -c")),
        (["-9"], "I do not know.", None),
        ([" ", ""], "anything", None),  # blank golds never match
    ],
)
def test_lead_in(answers, reference, expected):
    assert lead_in(answers, reference) == expected


# --------------------------------------------------------------------------- gold likelihood


def _likeliest_and_unlikeliest(comp, question: str, contexts: list) -> tuple[int, int]:
    """The decoder's likeliest and least likely first answer tokens that survive a decode/encode round trip."""
    prompt = build_prompt(comp, contexts, mode="answer", question=question)
    logits = target_logits(comp, [prompt], [[0]])[0][0]
    tok = comp.decoder.tokenizer

    def round_trips(i: int) -> bool:
        text = tok.decode([i])
        return bool(text.strip()) and comp.tokenize(text) == [i]

    ranked = torch.argsort(logits, descending=True).tolist()
    return next(i for i in ranked if round_trips(i)), next(i for i in reversed(ranked) if round_trips(i))


def test_loglik_ranks_what_the_decoder_would_say_above_what_it_would_not(tiny_raw):
    question = "Who walked on the Moon?"
    ids = _likeliest_and_unlikeliest(tiny_raw, question, [TEXT])
    likely, unlikely = (tiny_raw.decoder.tokenizer.decode([i]) for i in ids)
    high, low = answer_logliks(tiny_raw, [question] * 2, [[TEXT]] * 2, [("", likely), ("", unlikely)])
    assert high > low
    # The value is the log-probability the decoder gives that token there (a probability, so <= 0).
    logits = target_logits(tiny_raw, [build_prompt(tiny_raw, [TEXT], mode="answer", question=question)], [[0]])[0][0]
    assert high == pytest.approx(float(torch.log_softmax(logits, -1)[ids[0]]), abs=1e-4) and high <= 0


def test_loglik_is_scored_after_the_lead_in_and_batching_changes_nothing(tiny_raw):
    questions = ["Who walked on the Moon?", "When did the program end?", "What did it cost?"]
    targets = [("Neil", " Armstrong"), ("It ended in", " 1972"), ("", "25 billion dollars")]
    contexts = [[TEXT], [TEXT, "Another passage about rockets."], [TEXT]]
    batched = answer_logliks(tiny_raw, questions, contexts, targets, batch_size=8)
    alone = [answer_logliks(tiny_raw, [q], [c], [t], batch_size=1)[0] for q, c, t in zip(questions, contexts, targets, strict=True)]
    assert batched == pytest.approx(alone, abs=1e-4)
    # Another lead-in gives the same gold another score: the lead is read, not ignored.
    other = answer_logliks(tiny_raw, questions[:1], contexts[:1], [("The astronaut was", " Armstrong")])[0]
    assert other != pytest.approx(batched[0], abs=1e-4)


def test_targets_take_the_reference_lead_in_or_the_likeliest_place(tiny_raw):
    question = "Who walked on the Moon?"
    found = answer_targets(tiny_raw, [question], [[TEXT]], ["Neil Armstrong walked there."], [["Armstrong"]])
    assert found == [("Neil", " Armstrong")]
    # A reference without the gold: the gold goes after a prefix of the reference answer.
    reference = "Many people walked there in the program"
    (lead, gold), = answer_targets(tiny_raw, [question], [[TEXT]], [reference], [["Aldrin"]])
    assert reference.startswith(lead) and gold in ("Aldrin", " Aldrin") and (gold == "Aldrin") == (lead == "")
    with pytest.raises(InvalidInputError, match="no gold answer"):
        answer_targets(tiny_raw, [question], [[TEXT]], ["x"], [[]])


def test_loglik_rejects_mismatched_inputs(tiny_raw):
    with pytest.raises(InvalidInputError, match="one question, context list and target"):
        answer_logliks(tiny_raw, ["Who?"], [[TEXT], [TEXT]], [("", "x")])


# --------------------------------------------------------------------------- paired comparisons


def test_compare_counts_retention_and_flips_by_hand():
    mode = [1, 1, 0, 0, 1, 0]
    ref = [1, 0, 1, 0, 1, 1]
    out = compare(mode, ref, [-1.0, -2.0, -3.0, -1.0, -1.0, -2.0], [-1.5, -2.5, -3.5, -1.5, -1.5, -2.5])
    assert out["n"] == 6 and out["reference_answers"] == 4
    assert out["only_this"] == 1 and out["only_reference"] == 2
    assert out["retention"]["value"] == pytest.approx(2 / 4)  # of ref's 4 answers, this mode keeps 2
    assert out["contained_ratio"]["value"] == pytest.approx(3 / 4)
    assert out["loglik_diff"]["value"] == pytest.approx(0.5)
    assert out["loglik_diff"]["low"] == pytest.approx(0.5) == out["loglik_diff"]["high"]  # no spread
    low, high = out["retention"]["low"], out["retention"]["high"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0 and high - low > 0


def test_compare_without_reference_answers_reports_flips_only():
    out = compare([1, 0], [0, 0])
    assert out["only_this"] == 1 and "retention" not in out and "loglik_diff" not in out
    with pytest.raises(InvalidInputError, match="same questions"):
        compare([1, 0], [1])


def test_compare_modes_skips_missing_references_and_itself():
    scores = {"raw": [1, 1, 0], "full": [1, 0, 0], "4x": [0, 0, 0]}
    out = compare_modes(scores, ["raw", "not-run"], {"raw": [-1.0] * 3, "4x": [-2.0] * 3})
    assert set(out) == {"raw"} and set(out["raw"]) == {"full", "4x"}
    assert out["raw"]["4x"]["retention"]["value"] == 0.0 and out["raw"]["4x"]["loglik_diff"]["value"] == -1.0
    assert "loglik_diff" not in out["raw"]["full"]  # full has no log-likelihoods: not compared on them
    md = comparison_markdown(out)
    assert "Against **raw**" in md and "| 4x | 0.000 (0.000 to 0.000) | 0 / 2 |" in md


# --------------------------------------------------------------------------- agreement


def test_agreement_scores_the_reference_answer_and_skips_empty_ones(tiny_raw):
    questions = ["Who walked on the Moon?", "When did the program end?"]
    contexts = [[TEXT], [TEXT]]
    got = agreement_logliks(tiny_raw, questions, contexts, ["Neil Armstrong", "  "])
    assert got[1] is None  # the reference answered nothing: nothing to agree with
    assert got[0] == pytest.approx(answer_logliks(tiny_raw, questions[:1], contexts[:1], [("", "Neil Armstrong")])[0], abs=1e-6)
    # The contexts are read: without the passage the same answer scores otherwise.
    alone = agreement_logliks(tiny_raw, questions[:1], [[]], ["Neil Armstrong"])[0]
    assert alone != pytest.approx(got[0], abs=1e-4)
    with pytest.raises(InvalidInputError, match="one question, context list and reference answer"):
        agreement_logliks(tiny_raw, questions, contexts, ["x"])


def test_compare_modes_reports_agreement_against_each_reference_by_hand():
    scores = {"raw": [1, 1, 0], "full": [1, 0, 0], "4x": [0, 0, 0]}
    agreements = {"full": {"full": [-0.5, -1.0, None], "4x": [-1.5, -1.5, -2.0], "raw": [-0.5, -2.0, -3.0]}}
    out = compare_modes(scores, ["full"], agreements=agreements)
    # Paired where the reference answered: (-1.5 + 0.5 + -1.5 + 1.0) / 2; the third question is skipped.
    assert out["full"]["4x"]["agreement"]["value"] == pytest.approx(-0.75)
    assert out["full"]["raw"]["agreement"]["value"] == pytest.approx(-0.5)
    assert "Against **full**" in comparison_markdown(out) and "-0.750" in comparison_markdown(out)
    assert "agreement" not in compare_modes(scores, ["raw"], agreements=agreements)["raw"]["4x"]
