"""Paragraph QA sets: SQuAD-layout files (SQuAD with its fixed split, XQuAD) and NQ-open, QED, BoolQ,
PubMedQA, CLAP-NQ and HotpotQA, each as `QAExample`s over a short context (no torch).

The readers without a `load_` name are registered in `icae_rag.data.registry`; call them through
`load_dataset(name)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError
from .readers import QAExample, _bad, _digest, _get, _read_json, _read_jsonl, _resolve, _str_list

__all__ = ["SQUAD_HELDOUT_ARTICLES", "load_squad"]

# These 13 articles of SQuAD v1.1 dev are held out: evaluation only, never used for training.
SQUAD_HELDOUT_ARTICLES: frozenset[str] = frozenset(
    {
        "American_Broadcasting_Company",
        "Apollo_program",
        "Chloroplast",
        "Doctor_Who",
        "Genghis_Khan",
        "Kenya",
        "Martin_Luther",
        "Newcastle_upon_Tyne",
        "Nikola_Tesla",
        "Super_Bowl_50",
        "Teacher",
        "United_Methodist_Church",
        "Victoria_and_Albert_Museum",
    }
)


# ---------------------------------------------------------------------------- SQuAD-layout files

_Paragraph = tuple[str, str, str, list[Any], dict[str, Any]]


def _squad_layout(path: Path, *, title_required: bool) -> list[_Paragraph]:
    """Flatten a SQuAD-layout file into one (where, title, context, qas, raw dict) per paragraph."""
    data = _get(_read_json(path), "data", list, str(path))
    out: list[_Paragraph] = []
    for i, article in enumerate(data):
        where = f"{path}, data[{i}]"
        if title_required or (isinstance(article, dict) and "title" in article):
            title = _get(article, "title", str, where)
        else:
            title = ""
        for j, para in enumerate(_get(article, "paragraphs", list, where)):
            pwhere = f"{where}.paragraphs[{j}]"
            context = _get(para, "context", str, pwhere)
            qas = _get(para, "qas", list, pwhere)
            out.append((pwhere, title, context, qas, para))
    return out


def _squad_qa(qa: Any, where: str, *, allow_impossible: bool) -> tuple[str, str, tuple[str, ...]]:
    qid = _get(qa, "id", (str, int), where)
    question = _get(qa, "question", str, where)
    answers = _get(qa, "answers", list, where)
    texts = tuple(_get(a, "text", str, f"{where}.answers[{k}]") for k, a in enumerate(answers))
    if any(not t.strip() for t in texts):
        raise _bad(where, "an answer text is empty")
    impossible = qa.get("is_impossible", False)
    if impossible and not allow_impossible:
        raise _bad(where, "unexpected unanswerable question in this file")
    if bool(impossible) != (not texts):
        raise _bad(where, f"is_impossible={impossible!r} disagrees with {len(texts)} answers")
    return str(qid), question, texts


def _squad_examples(paragraphs: list[_Paragraph], *, allow_impossible: bool) -> list[QAExample]:
    out: list[QAExample] = []
    for where, title, context, qas, _ in paragraphs:
        for k, qa in enumerate(qas):
            qid, question, answers = _squad_qa(
                qa, f"{where}.qas[{k}]", allow_impossible=allow_impossible
            )
            out.append(
                QAExample(id=qid, context=context, question=question, answers=answers, title=title)
            )
    return out


def load_squad(
    split: Literal["train", "heldout"],
    *,
    version: Literal["v1.1", "v2.0"] = "v1.1",
    root: str | os.PathLike | None = None,
) -> list[QAExample]:
    """Load the project's fixed SQuAD dev split: 35 training articles or 13 held-out articles."""
    if split not in ("train", "heldout"):
        raise DataError(f"unknown SQuAD split {split!r}: use 'train' or 'heldout'")
    if version not in ("v1.1", "v2.0"):
        raise DataError(f"unknown SQuAD version {version!r}: use 'v1.1' or 'v2.0'")
    folder = "qa-squad-dev"
    v2_paras = _squad_layout(
        _resolve(root, folder, "dev-v2.0.reconstructed.json"), title_required=True
    )
    v2_titles = {p[1] for p in v2_paras}
    leaked = sorted(v2_titles & SQUAD_HELDOUT_ARTICLES)
    if leaked:
        raise DataError(
            f"SQuAD v2.0 dev holds held-out article(s) {leaked}: training on them would leak the "
            "evaluation split; restore the original qa-squad-dev files"
        )
    if split == "train" and version == "v2.0":
        return _squad_examples(v2_paras, allow_impossible=True)
    if split == "heldout" and version == "v2.0":
        raise DataError(
            "the 13 held-out SQuAD articles exist only in v1.1 dev (v2.0 dev is the training "
            "split): call load_squad('heldout', version='v1.1')"
        )

    v1_path = _resolve(root, folder, "dev-v1.1.reconstructed.json")
    v1_paras = _squad_layout(v1_path, title_required=True)
    v1_titles = {p[1] for p in v1_paras}
    # Every v1.1 article must belong to exactly one side, so nothing is dropped unaccounted for.
    unassigned = sorted(v1_titles - v2_titles - SQUAD_HELDOUT_ARTICLES)
    if unassigned:
        raise DataError(
            f"{v1_path}: article(s) {unassigned} are neither held out nor in v2.0 dev, so they "
            "belong to no split; restore the original qa-squad-dev files"
        )
    wanted = SQUAD_HELDOUT_ARTICLES if split == "heldout" else v2_titles
    missing = sorted(wanted - v1_titles)
    if missing:
        raise DataError(
            f"{v1_path}: article(s) {missing} of the {split} split are missing; "
            "restore the original qa-squad-dev files"
        )
    kept = [p for p in v1_paras if p[1] in wanted]
    return _squad_examples(kept, allow_impossible=False)



# ---------------------------------------------------------------------------- paragraph QA sets


def _nq_open_oracle(root: str | os.PathLike | None) -> list[QAExample]:
    path = _resolve(root, "qa-nq-open-oracle", "nq-open-oracle.jsonl")
    out = []
    for lineno, obj in _read_jsonl(path):
        where = f"{path}, line {lineno}"
        gold = [
            c for c in _get(obj, "ctxs", list, where) if isinstance(c, dict) and c.get("isgold")
        ]
        if len(gold) != 1:
            raise _bad(where, f"expected exactly 1 gold passage in 'ctxs', found {len(gold)}")
        answers = _str_list(_get(obj, "answers", list, where), where, "answers")
        out.append(
            QAExample(
                id=f"nq-open-oracle-{lineno}",
                context=_get(gold[0], "text", str, where + " ctxs[gold]"),
                question=_get(obj, "question", str, where),
                answers=tuple(answers),
                title=_get(gold[0], "title", str, where + " ctxs[gold]"),
            )
        )
    return out


def _qed(root: str | os.PathLike | None) -> list[QAExample]:
    path = _resolve(root, "qa-qed-nq-dev", "qed-dev.jsonl")
    out = []
    for lineno, obj in _read_jsonl(path):
        where = f"{path}, line {lineno}"
        answers = []
        for alt in _get(obj, "original_nq_answers", list, where):
            if not isinstance(alt, list) or not alt:
                raise _bad(where, "each original_nq_answers item must be a non-empty list")
            # An NQ short answer can be several spans (a list); one reference string per annotator.
            answers.append(", ".join(_get(span, "string", str, where) for span in alt))
        if not answers:
            raise _bad(where, "no original_nq_answers")
        out.append(
            QAExample(
                id=str(_get(obj, "example_id", (int, str), where)),
                context=_get(obj, "paragraph_text", str, where),
                question=_get(obj, "question_text", str, where),
                answers=tuple(answers),
                title=_get(obj, "title_text", str, where),
            )
        )
    return out


def _boolq(root: str | os.PathLike | None) -> list[QAExample]:
    path = _resolve(root, "qa-boolq-dev", "dev.jsonl")
    labels = {"True": "yes", "False": "no"}
    out = []
    for lineno, obj in _read_jsonl(path):
        where = f"{path}, line {lineno}"
        label = _get(obj, "answer", str, where)
        if label not in labels:
            raise _bad(where, f"'answer' must be 'True' or 'False', got {label!r}")
        out.append(
            QAExample(
                id=f"boolq-dev-{lineno}",
                context=_get(obj, "passage", str, where),
                question=_get(obj, "question", str, where),
                answers=(labels[label],),
                title=_get(obj, "title", str, where),
            )
        )
    return out


def _pubmedqa(root: str | os.PathLike | None) -> list[QAExample]:
    path = _resolve(root, "qa-pubmedqa-pqal", "ori_pqal.json")
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise _bad(path, "expected a non-empty JSON object keyed by PubMed id")
    out = []
    for pmid, rec in data.items():
        where = f"{path}, record {pmid!r}"
        decision = _get(rec, "final_decision", str, where)
        if decision not in ("yes", "no", "maybe"):
            raise _bad(where, f"final_decision must be yes/no/maybe, got {decision!r}")
        sections = _str_list(_get(rec, "CONTEXTS", list, where), where, "CONTEXTS")
        out.append(
            QAExample(
                id=str(pmid),
                context="\n\n".join(sections),
                question=_get(rec, "QUESTION", str, where),
                answers=(decision,),
            )
        )
    return out


def _clapnq(root: str | os.PathLike | None) -> list[QAExample]:
    out = []
    for kind in ("answerable", "unanswerable"):
        path = _resolve(root, "qa-clapnq-dev", f"clapnq_dev_{kind}.jsonl")
        for lineno, obj in _read_jsonl(path):
            where = f"{path}, line {lineno}"
            passages = _get(obj, "passages", list, where)
            if len(passages) != 1:
                raise _bad(where, f"expected 1 passage, found {len(passages)}")
            texts = [_get(o, "answer", str, where) for o in _get(obj, "output", list, where)]
            # Skipped annotations are "" and a few are the placeholder "NA"; neither is a reference.
            answers = tuple(t for t in texts if t.strip() not in ("", "NA"))
            if (kind == "answerable") != bool(answers):
                raise _bad(where, f"a record in the {kind} file has {len(answers)} usable answers")
            out.append(
                QAExample(
                    id=str(_get(obj, "id", (str, int), where)),
                    context=_get(passages[0], "text", str, where),
                    question=_get(obj, "input", str, where),
                    answers=answers,
                    title=_get(passages[0], "title", str, where),
                )
            )
    return out


def _xquad(root: str | os.PathLike | None) -> list[QAExample]:
    path = _resolve(root, "qa-xquad-en", "xquad.en.json")
    return _squad_examples(_squad_layout(path, title_required=False), allow_impossible=False)


def _hotpot_paragraph(title: Any, sentences: Any, where: str) -> str:
    if (
        not isinstance(title, str)
        or not isinstance(sentences, list)
        or not all(isinstance(s, str) for s in sentences)
    ):
        raise _bad(where, "a paragraph must be a title and a list of sentences")
    # Sentences after the first carry their own leading space, so they join with "".
    return f"{title}\n{''.join(sentences)}"


def _hotpotqa(root: str | os.PathLike | None) -> list[QAExample]:
    path = _resolve(root, "qa-hotpotqa-sample100", "camera_ready_nd8_dev_sample100.json")
    data = _read_json(path)
    if not isinstance(data, list) or not data:
        raise _bad(path, "expected a non-empty JSON list")
    out = []
    for i, rec in enumerate(data):
        where = f"{path}, item {i}"
        qid = _get(rec, "_id", str, where)
        paragraphs = [
            _hotpot_paragraph(
                _get(rec, f"title_{s}", str, where), _get(rec, f"para_{s}", list, where), where
            )
            for s in ("a", "b")
        ]
        for k, d in enumerate(_get(rec, "distractors", list, where)):
            if not isinstance(d, list) or len(d) < 2:
                raise _bad(where, f"distractors[{k}] must be [title, sentences, ...]")
            paragraphs.append(_hotpot_paragraph(d[0], d[1], f"{where}.distractors[{k}]"))
        # The file lists the two gold paragraphs first; a fixed pseudo-random order keeps
        # position from giving the answer away while staying the same on every run.
        paragraphs.sort(key=lambda p: _digest(f"{qid}\n{p}"))
        out.append(
            QAExample(
                id=qid,
                context="\n\n".join(paragraphs),
                question=_get(rec, "question", str, where),
                answers=(_get(rec, "answer", str, where),),
            )
        )
    return out
