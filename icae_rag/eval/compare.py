"""Modes compared question by question: retention, flips, and the gold answer's likelihood.

Answer-contained alone has little power: two budgets that differ by a few answers each way look
alike. Two paired measures with more power, each against a reference mode (raw text, or memories
with nothing evicted) on the same questions:

- *retention*: of the questions the reference answers, the share this mode answers too, with the
  flips each way;
- *gold log-likelihood*: the gold answer's mean log-probability per token, teacher-forced where the
  decoder puts its answer. This decoder opens its answers with a lead-in ("The exit status of gzip
  is 2."), so scoring the gold right after the answer prompt rewards a flatter, less informed
  distribution; instead the gold is scored after the lead-in a reference answer gave it
  (`answer_targets`), the same lead-in for every mode of a question;
- *agreement*: the reference's own answer's mean log-probability per token under this mode, minus
  under the reference (`agreement_logliks`): how far the mode moved the decoder's answer from the
  reference's, on every question, right or wrong. It is 0 for the reference itself and falls as a
  memory loses what the reference's answer drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import InvalidInputError
from .metrics import bootstrap_ci, paired_ratio_ci


def lead_in(answers: Sequence[str], reference: str) -> tuple[str, str] | None:
    """(lead-in, gold) where a reference answer put a gold answer: the text before the earliest gold it
    holds, and that gold as written in `answers` (the lead-in's trailing spaces move to the gold, so its
    first token carries the space the decoder wrote); None if it holds none."""
    low = reference.lower()
    found = [(low.find(a.lower()), a) for a in answers if a.strip() and a.lower() in low]
    if not found:
        return None
    start, gold = min(found, key=lambda f: (f[0], -len(f[1])))
    lead = reference[:start]
    return lead.rstrip(), lead[len(lead.rstrip()):] + gold


@torch.no_grad()
def answer_targets(compressor: Any, questions: Sequence[str], contexts: Sequence[Sequence[Any]],
                   references: Sequence[str], answers: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Per question, (lead-in, gold): where the decoder put its answer in the reference mode's answer
    (`references`, read from `contexts`). A reference that holds a gold answer gives its own lead-in
    (`lead_in`); otherwise the gold goes where the reference decoder expected it most: after the
    prefix of its answer at which the gold's first token was most probable."""
    from ..decoding import build_prompt, target_logits

    out = []
    for question, ctx, reference, golds in zip(questions, contexts, references, answers, strict=True):
        if not golds:
            raise InvalidInputError(f"question {question!r} has no gold answer to score")
        found = lead_in(golds, reference)
        if found is not None:
            out.append(found)
            continue
        ids = compressor.tokenize(reference) if reference.strip() else []
        first = [compressor.tokenize(golds[0])[0]] + [compressor.tokenize(" " + golds[0])[0]] * len(ids)
        prompt = build_prompt(compressor, list(ctx), mode="answer", question=question)
        logits = target_logits(compressor, [prompt], [[*ids, first[0]]])[0]  # the last id only pads
        logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(first)), torch.tensor(first)]
        t = int(logp.argmax())
        lead = compressor.decoder.tokenizer.decode(ids[:t])
        out.append((lead.rstrip(), golds[0] if t == 0 else " " + golds[0]))
    return out


@torch.no_grad()
def answer_logliks(compressor: Any, questions: Sequence[str], contexts: Sequence[Sequence[Any]],
                   targets: Sequence[tuple[str, str]], *, batch_size: int = 8) -> list[float]:
    """Per question, the gold's mean log-probability per token (nats), teacher-forced after its lead-in
    (`answer_targets`), the decoder reading `contexts` in the answer prompt."""
    from ..decoding import build_prompt, target_logits

    if not len(questions) == len(contexts) == len(targets):
        raise InvalidInputError("answer_logliks needs one question, context list and target each")
    tokenize = compressor.tokenize
    out: list[float] = []
    for lo in range(0, len(questions), batch_size):
        batch = range(lo, min(lo + batch_size, len(questions)))
        prompts = [build_prompt(compressor, list(contexts[i]), mode="answer", question=questions[i]) for i in batch]
        leads = [tokenize(targets[i][0]) if targets[i][0] else [] for i in batch]
        golds = [tokenize(targets[i][1]) for i in batch]
        if any(not g for g in golds):
            raise InvalidInputError("a gold answer tokenises to nothing: pass a non-empty answer")
        logits = target_logits(compressor, prompts, [lead + gold for lead, gold in zip(leads, golds, strict=True)])
        for x, lead, gold in zip(logits, leads, golds, strict=True):
            logp = torch.log_softmax(x[len(lead):], dim=-1)
            out.append(float(logp.gather(1, torch.tensor(gold, device=logp.device)[:, None]).mean()))
    return out


@torch.no_grad()
def agreement_logliks(compressor: Any, questions: Sequence[str], contexts: Sequence[Sequence[Any]],
                      reference_answers: Sequence[str], *, batch_size: int = 8) -> list[float | None]:
    """Per question, a reference mode's own answer's mean log-probability per token (nats), teacher-forced
    right after the answer prompt, the decoder reading `contexts` (None where the reference answered nothing)."""
    if not len(questions) == len(contexts) == len(reference_answers):
        raise InvalidInputError("agreement_logliks needs one question, context list and reference answer each")
    keep = [i for i, a in enumerate(reference_answers) if a.strip()]
    got = answer_logliks(compressor, [questions[i] for i in keep], [contexts[i] for i in keep],
                         [("", reference_answers[i].strip()) for i in keep], batch_size=batch_size)
    out: list[float | None] = [None] * len(questions)
    for i, value in zip(keep, got, strict=True):
        out[i] = value
    return out


def compare(scores: Sequence[float], reference: Sequence[float], logliks: Sequence[float] | None = None,
            reference_logliks: Sequence[float] | None = None, *, agreement: Sequence[float | None] | None = None,
            reference_agreement: Sequence[float | None] | None = None, seed: int = 0) -> dict[str, Any]:
    """One mode against a reference on the same questions: contained ratio, retention and flips,
    the mean gold log-likelihood difference and the agreement (the reference's own answer scored
    under this mode minus under the reference, where it answered), each with its paired 95% bootstrap
    interval."""
    if len(scores) != len(reference) or not scores:
        raise InvalidInputError("compare needs one score per question in each mode, on the same questions")
    both = [s * r for s, r in zip(scores, reference, strict=True)]
    out: dict[str, Any] = {"n": len(scores), "reference_answers": int(sum(reference)),
                           "only_this": int(sum(s > r for s, r in zip(scores, reference, strict=True))),
                           "only_reference": int(sum(r > s for s, r in zip(scores, reference, strict=True)))}
    if sum(reference) > 0:
        out["contained_ratio"] = dict(zip(("value", "low", "high"), paired_ratio_ci(scores, reference, seed=seed), strict=True))
        out["retention"] = dict(zip(("value", "low", "high"), paired_ratio_ci(both, reference, seed=seed), strict=True))
    if logliks is not None and reference_logliks is not None:
        diffs = [a - b for a, b in zip(logliks, reference_logliks, strict=True)]
        out["loglik_diff"] = dict(zip(("value", "low", "high"), bootstrap_ci(diffs, seed=seed), strict=True))
    if agreement is not None and reference_agreement is not None:
        diffs = [a - b for a, b in zip(agreement, reference_agreement, strict=True) if a is not None and b is not None]
        if diffs:
            out["agreement"] = dict(zip(("value", "low", "high"), bootstrap_ci(diffs, seed=seed), strict=True))
    return out


def compare_modes(scores: Mapping[str, Sequence[float]], references: Sequence[str],
                  logliks: Mapping[str, Sequence[float]] | None = None,
                  agreements: Mapping[str, Mapping[str, Sequence[float | None]]] | None = None,
                  *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every mode against every reference present (e.g. "raw", "kvzip:keep_fraction=1.0"):
    {reference: {mode: compare(...)}}; a reference missing from `scores` is skipped. `agreements`
    is {reference: {mode: agreement_logliks(...)}}, the reference itself included."""
    logliks, agreements = logliks or {}, agreements or {}
    return {ref: {mode: compare(s, scores[ref], logliks.get(mode), logliks.get(ref),
                                agreement=agreements.get(ref, {}).get(mode),
                                reference_agreement=agreements.get(ref, {}).get(ref), seed=seed)
                  for mode, s in scores.items() if mode != ref}
            for ref in references if ref in scores}


def comparison_markdown(comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One table per reference: retention and flips, contained ratio, gold log-likelihood difference, agreement."""
    def cell(d: Mapping[str, float] | None, fmt: str) -> str:
        return "-" if d is None else f"{d['value']:{fmt}} ({d['low']:{fmt}} to {d['high']:{fmt}})"

    lines = []
    for ref, modes in comparisons.items():
        lines += [f"Against **{ref}** (paired, 95% bootstrap intervals):", "",
                  "| mode | retention | only this / only reference | contained ratio | gold log-lik difference (nats/token) "
                  "| agreement (nats/token) |",
                  "|---|---|---|---|---|---|"]
        for mode, c in modes.items():
            lines.append(f"| {mode} | {cell(c.get('retention'), '.3f')} | {c['only_this']} / {c['only_reference']} | "
                         f"{cell(c.get('contained_ratio'), '.2f')} | {cell(c.get('loglik_diff'), '+.3f')} | "
                         f"{cell(c.get('agreement'), '+.3f')} |")
        lines.append("")
    return "\n".join(lines)
