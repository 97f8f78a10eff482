"""Long-document QA sets: COVID-QA, the shipped techdocs set, SQuALITY and QMSum, each as `LongDocQA`s
over a whole document (no torch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError
from .qa import _squad_layout, _squad_qa
from .readers import LongDocQA, _bad, _digest, _get, _read_jsonl, _resolve, _str_list

__all__ = ["TECHDOCS_DIR", "load_covid_qa", "load_qmsum", "load_squality", "load_techdocs"]

def load_covid_qa(root: str | os.PathLike | None = None) -> list[LongDocQA]:
    """Load COVID-QA: 1,380 extractive questions over 98 whole scientific papers."""
    path = _resolve(root, "longqa-covid-qa", "200423_covidQA.json")
    out = []
    for where, _, context, qas, para in _squad_layout(path, title_required=False):
        doc_id = str(_get(para, "document_id", (int, str), where))
        for k, qa in enumerate(qas):
            qid, question, answers = _squad_qa(qa, f"{where}.qas[{k}]", allow_impossible=False)
            out.append(
                LongDocQA(
                    id=qid, document=context, question=question, answers=answers, doc_id=doc_id
                )
            )
    return out


TECHDOCS_DIR = Path(__file__).resolve().parent / "techdocs"
_TECHDOCS_SPLITS = ("test", "dev")


def _techdocs_documents(path: Path) -> dict[str, dict[str, str]]:
    docs: dict[str, dict[str, str]] = {}
    for lineno, obj in _read_jsonl(path):
        where = f"{path}, line {lineno}"
        doc = {key: _get(obj, key, str, where) for key in ("doc_id", "split", "title", "source", "licence", "text")}
        if doc["doc_id"] in docs:
            raise _bad(where, f"doc_id {doc['doc_id']!r} appears twice")
        if doc["split"] not in _TECHDOCS_SPLITS:
            raise _bad(where, f"split must be 'test' or 'dev', got {doc['split']!r}")
        if not all(doc[key].strip() for key in doc):
            raise _bad(where, "doc_id, title, source, licence and text must not be empty")
        docs[doc["doc_id"]] = doc
    return docs


def load_techdocs(
    split: Literal["test", "dev"] = "test", *, folder: str | os.PathLike | None = None
) -> list[LongDocQA]:
    """Load the techdocs QA set shipped with icae_rag: hand-written questions over man pages and Python
    docs, split by document. `test` is for evaluation only; `dev` only for calibrating a setting.

    Every answer must occur verbatim in its document. `folder` (default: the shipped
    icae_rag/data/techdocs) holds documents.jsonl and questions.jsonl; see its SOURCE.md.
    """
    if split not in _TECHDOCS_SPLITS:
        raise DataError(f"unknown techdocs split {split!r}: use 'test' or 'dev'")
    base = TECHDOCS_DIR if folder is None else Path(folder)
    docs = _techdocs_documents(base / "documents.jsonl")
    path = base / "questions.jsonl"
    out, seen = [], set()
    for lineno, obj in _read_jsonl(path):
        where = f"{path}, line {lineno}"
        qid = _get(obj, "id", str, where)
        doc_id = _get(obj, "doc_id", str, where)
        question = _get(obj, "question", str, where)
        answers = _str_list(_get(obj, "answers", list, where), where, "answers")
        if qid in seen:
            raise _bad(where, f"question id {qid!r} appears twice")
        seen.add(qid)
        if doc_id not in docs:
            raise _bad(where, f"doc_id {doc_id!r} is not in {base / 'documents.jsonl'}")
        if not question.strip() or not answers or not all(a.strip() for a in answers):
            raise _bad(where, "the question and its answers must not be empty")
        missing = [a for a in answers if a not in docs[doc_id]["text"]]
        if missing:
            raise _bad(where, f"answers {missing!r} do not occur verbatim in document {doc_id!r}")
        if docs[doc_id]["split"] == split:
            out.append(LongDocQA(id=qid, document=docs[doc_id]["text"], question=question,
                                 answers=tuple(answers), doc_id=doc_id))
    return out


def _split_records(
    name: str, folder: str, split: str, splits: tuple[str, ...], root: str | os.PathLike | None
) -> list[tuple[str, Any]]:
    """(where, record) per line of `folder/<split>.jsonl`, once `split` is checked to be one of `splits`."""
    if split not in splits:
        use = ", ".join(repr(s) for s in splits[:-1]) + f" or {splits[-1]!r}"
        raise DataError(f"unknown {name} split {split!r}: use {use}")
    path = _resolve(root, folder, f"{split}.jsonl")
    return [(f"{path}, line {lineno}", obj) for lineno, obj in _read_jsonl(path)]


def load_squality(
    split: Literal["train", "dev", "test"], root: str | os.PathLike | None = None
) -> list[LongDocQA]:
    """Load SQuALITY: 5 questions per Gutenberg story, each with its 4 reference answers."""
    out = []
    for where, obj in _split_records("SQuALITY", "longqa-squality", split, ("train", "dev", "test"), root):
        doc_id = str(_get(_get(obj, "metadata", dict, where), "passage_id", (str, int), where))
        document = _get(obj, "document", str, where)
        for k, q in enumerate(_get(obj, "questions", list, where)):
            qwhere = f"{where}, questions[{k}]"
            responses = _get(q, "responses", list, qwhere)
            # Some responses start with a stray newline or tab from the annotation tool.
            answers = tuple(_get(r, "response_text", str, qwhere).strip() for r in responses)
            if not answers or any(not a for a in answers):
                raise _bad(qwhere, "missing or empty reference responses")
            number = _get(q, "question_number", (int, str), qwhere)
            out.append(
                LongDocQA(
                    id=f"squality-{doc_id}-q{number}",
                    document=document,
                    question=_get(q, "question_text", str, qwhere),
                    answers=answers,
                    doc_id=doc_id,
                )
            )
    return out


def load_qmsum(
    split: Literal["train", "val", "test"], root: str | os.PathLike | None = None
) -> list[LongDocQA]:
    """Load QMSum: general and specific queries over whole meeting transcripts."""
    out = []
    for where, obj in _split_records("QMSum", "longqa-qmsum", split, ("train", "val", "test"), root):
        turns = []
        for k, turn in enumerate(_get(obj, "meeting_transcripts", list, where)):
            twhere = f"{where}, meeting_transcripts[{k}]"
            speaker = _get(turn, "speaker", str, twhere)
            turns.append(f"{speaker}: {_get(turn, 'content', str, twhere)}")
        document = "\n".join(turns)
        # Meetings carry no id in the file; a content hash stays the same whichever split holds it.
        doc_id = f"qmsum-{_digest(document).hex()[:12]}"
        for kind in ("general", "specific"):
            for k, q in enumerate(_get(obj, f"{kind}_query_list", list, where)):
                qwhere = f"{where}, {kind}_query_list[{k}]"
                out.append(
                    LongDocQA(
                        id=f"{doc_id}-{kind}-{k}",
                        document=document,
                        question=_get(q, "query", str, qwhere),
                        answers=(_get(q, "answer", str, qwhere),),
                        doc_id=doc_id,
                    )
                )
    return out
