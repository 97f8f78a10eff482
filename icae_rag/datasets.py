"""The data-set registry, the readers behind it, and readers for users' JSONL files (no torch).

Every reader returns plain frozen records and raises `DataError` / `MissingFileError` with the
file, the place in it and the fix; no malformed record is ever skipped silently. Each named data
set is registered once (`register_dataset`, at the end of this module) with the commands that
offer it; training sources, `icae-rag bench qa --dataset` and the LlamaIndex RAG benchmark read
the registry when they run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import DataError, InvalidInputError, MissingFileError, PluginError
from .plugins import DATASET_GROUP, entry_points
from .text import read_text

__all__ = [
    "SQUAD_HELDOUT_ARTICLES",
    "TEXT_NAMES",
    "Dataset",
    "LongDocQA",
    "QAExample",
    "dataset_names",
    "default_data_root",
    "get_dataset",
    "load_covid_qa",
    "load_dataset",
    "load_jsonl_qa",
    "load_jsonl_text",
    "load_qmsum",
    "load_squad",
    "load_squality",
    "load_techdocs",
    "load_text",
    "read_text_file",
    "register_dataset",
    "split_documents",
    "unregister_dataset",
]

T = TypeVar("T")

DATA_ENV_VAR = "ICAE_RAG_DATA"

# From /work/shared/data/README.md: these 13 articles of SQuAD v1.1 dev are evaluation only.
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

TEXT_NAMES: tuple[str, ...] = ("wikitext2-valid", "wikitext2-test", "gutenberg", "tinyshakespeare")

_SHIPPED_FIX = (
    "the file does not match the schema in its folder's SOURCE.md; restore the original file"
)
_USER_QA_FIX = (
    'each line must be a JSON object {"context": str, "question": str, '
    '"answer": str | list[str]} with an optional "id"'
)
_USER_TEXT_FIX = 'each line must be a JSON object {"text": str}'


@dataclass(frozen=True, slots=True)
class QAExample:
    """One question over a short context; `answers == ()` means the question is unanswerable."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    title: str = ""

    def __post_init__(self) -> None:
        _check_answers(self.answers, self.id)


@dataclass(frozen=True, slots=True)
class LongDocQA:
    """One question over a whole long document; `doc_id` groups questions on the same document."""

    id: str
    document: str
    question: str
    answers: tuple[str, ...]
    doc_id: str

    def __post_init__(self) -> None:
        _check_answers(self.answers, self.id)


def _check_answers(answers: object, record_id: str) -> None:
    # A bare string here would later be iterated character by character by the metrics.
    if not isinstance(answers, tuple) or not all(isinstance(a, str) for a in answers):
        raise InvalidInputError(
            f"record {record_id!r}: answers must be a tuple of str, got {answers!r}; "
            "wrap a single answer as (answer,)"
        )


# ---------------------------------------------------------------------------- paths and files


def default_data_root() -> Path:
    """Return the data folder: $ICAE_RAG_DATA if set, else ../shared/data from the working dir."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise MissingFileError(
                f"${DATA_ENV_VAR}={env!r} is not a directory: point it at the shared data folder "
                "(the one holding README.md and the qa-*/longqa-*/text-* folders)"
            )
        return root.resolve()
    root = Path.cwd() / ".." / "shared" / "data"
    if root.is_dir():
        return root.resolve()
    raise DataError(
        f"no data folder found: ${DATA_ENV_VAR} is not set and {root} does not exist; "
        f"set {DATA_ENV_VAR}=/path/to/shared/data, run from the project root, or pass root=..."
    )


def _resolve(root: str | os.PathLike | None, *parts: str) -> Path:
    base = default_data_root() if root is None else Path(root)
    path = base.joinpath(*parts)
    if not path.exists():
        raise MissingFileError(
            f"{path} does not exist: pass root= pointing at the shared data folder "
            f"or set {DATA_ENV_VAR} (data root used: {base})"
        )
    return path


def read_text_file(path: Path) -> str:
    """Read a UTF-8 text file (BOM dropped), with typed errors for a missing, binary or non-UTF-8 file."""
    # The check the CLI and the QA app use (icae_rag.text); a NotTextError is a DataError.
    return read_text(path)


def _read_json(path: Path) -> Any:
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "restore the original file"
        ) from e


def _read_jsonl(path: Path, fix: str = _SHIPPED_FIX) -> list[tuple[int, Any]]:
    """Return (1-based line number, parsed value) for every non-blank line."""
    rows: list[tuple[int, Any]] = []
    for lineno, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {lineno}: invalid JSON ({e.msg}); {fix}") from e
    if not rows:
        raise DataError(f"{path} is empty (no JSON lines): {fix}")
    return rows


def _get(
    obj: Any, key: str, kind: type | tuple[type, ...], where: str, fix: str = _SHIPPED_FIX
) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}; {fix}")
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r}; {fix}")
    value = obj[key]
    # JSON true/false load as bool, which isinstance() would otherwise accept as an int.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise DataError(f"{where}: {key!r} must be {names}, got {type(value).__name__}; {fix}")
    return value


def _bad(where: object, problem: str) -> DataError:
    return DataError(f"{where}: {problem}; {_SHIPPED_FIX}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _str_list(value: list, where: str, key: str, fix: str = _SHIPPED_FIX) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: every item of {key!r} must be a string; {fix}")
    return value


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


# ---------------------------------------------------------------------------- plain text


_WIKI_TITLE = re.compile(r" = [^=].* = ")
_PG_START = re.compile(
    r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*$", re.M | re.I
)
_PG_END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*$", re.M | re.I)
# The "End of the Project Gutenberg EBook of <title>, by\n<author>" note just before END.
_PG_END_NOTE = re.compile(
    r"(?:^|\n)[ \t]*End of (?:the )?Project Gutenberg[^\n]*(?:\n[^\n]+)*\s*\Z", re.I
)


def _split_wikitext(text: str, path: Path) -> list[str]:
    lines = text.split("\n")
    starts: list[int] = []
    offset = 0
    line_offsets = []
    for line in lines:
        line_offsets.append(offset)
        offset += len(line) + 1
    # A title line sits between two " " lines; requiring that rejects formula lines such as
    # " = 1 <unk> and <unk> C = " in test.txt, which a bare heading regex would count.
    for i in range(1, len(lines) - 1):
        if lines[i - 1] == " " and lines[i + 1] == " " and _WIKI_TITLE.fullmatch(lines[i]):
            starts.append(line_offsets[i - 1])
    if not starts:
        raise DataError(
            f"{path}: no ' = Title = ' article headings found; restore the original file"
        )
    # Text before the first heading (only " \n" in the shipped files) stays with the first article.
    starts[0] = 0
    bounds = [*starts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _strip_gutenberg(text: str, path: Path) -> str:
    text = text.replace("\r\n", "\n")
    start, end = _PG_START.search(text), _PG_END.search(text)
    if start and end and end.start() < start.end():
        raise DataError(
            f"{path}: the '*** END OF' line comes before '*** START OF'; restore the file"
        )
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    if end:
        body = _PG_END_NOTE.sub("", body)
    return body.strip()


def load_text(
    name: Literal["wikitext2-valid", "wikitext2-test", "gutenberg", "tinyshakespeare"],
    root: str | os.PathLike | None = None,
) -> list[str]:
    """Load a plain-text corpus as a list of documents (WikiText articles, books, one play file)."""
    if name in ("wikitext2-valid", "wikitext2-test"):
        path = _resolve(
            root, "text-wikitext2", "valid.txt" if name == "wikitext2-valid" else "test.txt"
        )
        return _split_wikitext(read_text_file(path), path)
    if name == "gutenberg":
        folder = _resolve(root, "text-gutenberg")
        books = sorted(folder.glob("pg*.txt"))
        if not books:
            raise DataError(f"{folder} holds no pg*.txt books: restore the text-gutenberg folder")
        out = []
        for path in books:
            body = _strip_gutenberg(read_text_file(path), path)
            if not body:
                raise DataError(f"{path}: no text left after removing the Gutenberg header/footer")
            out.append(body)
        return out
    if name == "tinyshakespeare":
        # The file has no reliable play boundaries, so it is one document.
        return [read_text_file(_resolve(root, "text-tinyshakespeare", "input.txt"))]
    raise DataError(f"unknown text corpus {name!r}: use one of {', '.join(TEXT_NAMES)}")


# ---------------------------------------------------------------------------- user JSONL


def load_jsonl_qa(path: str | os.PathLike) -> list[QAExample]:
    """Read a user's JSONL of {"context", "question", "answer"[, "id", "title"]} objects."""
    path = Path(path)
    out: list[QAExample] = []
    seen: dict[str, int] = {}
    for lineno, obj in _read_jsonl(path, _USER_QA_FIX):
        where = f"{path}, line {lineno}"
        context = _get(obj, "context", str, where, _USER_QA_FIX)
        question = _get(obj, "question", str, where, _USER_QA_FIX)
        answer = _get(obj, "answer", (str, list), where, _USER_QA_FIX)
        if not context.strip() or not question.strip():
            raise DataError(f"{where}: 'context' and 'question' must not be empty; {_USER_QA_FIX}")
        if isinstance(answer, str):
            if not answer.strip():
                raise DataError(
                    f"{where}: 'answer' is an empty string; give the answer text, "
                    'or "answer": [] for an unanswerable question'
                )
            answers: tuple[str, ...] = (answer,)
        else:
            answers = tuple(_str_list(answer, where, "answer", _USER_QA_FIX))
            if any(not a.strip() for a in answers):
                raise DataError(f"{where}: 'answer' holds an empty string; remove it")
        rid = (
            str(_get(obj, "id", (str, int), where, _USER_QA_FIX))
            if "id" in obj
            else f"{path.stem}-{lineno}"
        )
        if rid in seen:
            raise DataError(
                f"{where}: id {rid!r} already used on line {seen[rid]}; make ids unique"
            )
        seen[rid] = lineno
        title = _get(obj, "title", str, where, _USER_QA_FIX) if "title" in obj else ""
        out.append(
            QAExample(id=rid, context=context, question=question, answers=answers, title=title)
        )
    return out


def load_jsonl_text(path: str | os.PathLike) -> list[str]:
    """Read a user's JSONL of {"text": str} objects as a list of documents."""
    path = Path(path)
    out: list[str] = []
    for lineno, obj in _read_jsonl(path, _USER_TEXT_FIX):
        text = _get(obj, "text", str, f"{path}, line {lineno}", _USER_TEXT_FIX)
        if not text.strip():
            raise DataError(
                f"{path}, line {lineno}: 'text' is empty; remove the line or fill it in"
            )
        out.append(text)
    return out


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


# ---------------------------------------------------------------------------- long-document sets


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


TECHDOCS_DIR = Path(__file__).resolve().parent / "data" / "techdocs"
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


# ---------------------------------------------------------------------------- splitting


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def split_documents(
    items: Sequence[T], *, eval_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Split items into (train, eval) by a seeded SHA-256 of each index; same result every run."""
    if (
        isinstance(eval_fraction, bool)
        or not isinstance(eval_fraction, (int, float))
        or not (0.0 <= eval_fraction <= 1.0)
    ):
        raise InvalidInputError(f"eval_fraction must be a number in [0, 1], got {eval_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed must be an int, got {seed!r}")
    n = len(items)
    n_eval = min(n, math.floor(n * eval_fraction + 0.5))
    # Ranking by hash (rather than thresholding it) gives exactly n_eval eval items, and a larger
    # eval_fraction with the same seed yields a superset of the smaller one's eval items.
    ranked = sorted(range(n), key=lambda i: _digest(f"{seed}:{i}"))
    eval_idx = set(ranked[:n_eval])
    train = [items[i] for i in range(n) if i not in eval_idx]
    evals = [items[i] for i in range(n) if i in eval_idx]
    return train, evals


# ---------------------------------------------------------------------------- the registry


DEFAULT_BENCH_LIMIT = 100


@dataclass(frozen=True)
class Dataset:
    """A named data set: what its records are, how to load them, and which commands offer it.

    `records` is "text" (documents as str), "qa" (`QAExample`) or "longqa" (`LongDocQA`).
    `load(root, **params)` reads it; `params` names the extra options it takes (a training
    source's `path` or `squad_version`). `uses` holds "train" (a training source), "bench-qa"
    (`icae-rag bench qa --dataset`), "bench-qa-default" (run when no --dataset is given),
    "fidelity" and "rag" (the LlamaIndex RAG benchmark). `bench_limit` is the number of
    questions `bench` samples when no --limit is given.
    """

    name: str
    records: Literal["text", "qa", "longqa"]
    load: Callable[..., list]
    description: str
    uses: frozenset[str] = frozenset()
    params: tuple[str, ...] = ()
    bench_limit: int = DEFAULT_BENCH_LIMIT


_DATASETS: dict[str, Dataset] = {}
# The installed `icae_rag.datasets` entry points are read on the first lookup, once per process;
# a plugin that fails to load is left out (with a warning) and its error kept for `get_dataset`.
_PLUGINS_READ = False
_BROKEN_PLUGINS: dict[str, PluginError] = {}
_USES = frozenset({"train", "bench-qa", "bench-qa-default", "fidelity", "rag"})


def register_dataset(name: str, records: Literal["text", "qa", "longqa"], load: Callable[..., list],
                     description: str, *, uses: Sequence[str] = (), params: Sequence[str] = (),
                     bench_limit: int = DEFAULT_BENCH_LIMIT) -> Dataset:
    """Register a data set under a new lowercase name; see `Dataset` for the fields."""
    if name != name.lower() or name in _DATASETS:
        raise ValueError(f"data set {name!r} must be lowercase and registered only once")
    if records not in ("text", "qa", "longqa") or not set(uses) <= _USES:
        raise ValueError(f"data set {name!r}: records must be text, qa or longqa and uses a subset of "
                         f"{sorted(_USES)}, got {records!r} and {sorted(uses)}")
    _DATASETS[name] = Dataset(name, records, load, description, frozenset(uses), tuple(params), bench_limit)
    return _DATASETS[name]


def unregister_dataset(name: str) -> None:
    """Remove a registered data set (one `register_dataset` or an entry point added)."""
    _read_plugins()
    if name not in _DATASETS:
        raise DataError(f"data set {name!r} is not registered: registered are {', '.join(_DATASETS)}")
    del _DATASETS[name]


def dataset_names(*, use: str | None = None, records: str | None = None) -> list[str]:
    """Registered data-set names in registration order (built-ins, then plugins), read now; optionally
    one use or record type."""
    _read_plugins()
    return [d.name for d in _DATASETS.values()
            if use in (None, *d.uses) and records in (None, d.records)]


def get_dataset(name: str) -> Dataset:
    """The registered data set `name`."""
    _read_plugins()
    if name in _BROKEN_PLUGINS and name not in _DATASETS:
        raise _BROKEN_PLUGINS[name]
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(dataset_names())}")
    return _DATASETS[name]


def _read_plugins() -> None:
    """Register the data sets of the installed `icae_rag.datasets` entry points (first call only)."""
    global _PLUGINS_READ
    if _PLUGINS_READ:
        return
    _PLUGINS_READ = True
    for name, ep in entry_points(DATASET_GROUP).items():
        if name in _DATASETS:
            warnings.warn(f"an installed package declares the data set {name!r} ({ep.value!r}), which is "
                          "already registered: ignored", stacklevel=3)
            continue
        try:
            _load_plugin(name, ep)
        except PluginError as e:
            _BROKEN_PLUGINS[name] = e
            warnings.warn(f"{e}; the data set is left out", stacklevel=3)


def _load_plugin(name: str, ep: Any) -> None:
    where = f"the data set {name!r} (entry point {name} = {ep.value!r} in group {DATASET_GROUP})"
    try:
        obj = ep.load()
        dataset = obj if isinstance(obj, Dataset) else obj()
    except Exception as e:  # a plugin can fail any way; name it and the cause
        raise PluginError(f"{where} could not be loaded: {type(e).__name__}: {e}") from e
    if dataset is None and name in _DATASETS:  # the callable registered it
        return
    if not isinstance(dataset, Dataset) or dataset.name != name:
        raise PluginError(f"{where} must name a Dataset called {name!r}, or a callable that returns one "
                          f"or registers it with register_dataset; got {dataset!r}")
    try:
        register_dataset(name, dataset.records, dataset.load, dataset.description, uses=dataset.uses,
                         params=dataset.params, bench_limit=dataset.bench_limit)
    except ValueError as e:
        raise PluginError(f"{where}: {e}") from e


def load_dataset(name: str, root: str | os.PathLike | None = None, **params: Any) -> list:
    """Load the registered data set `name` (documents, `QAExample`s or `LongDocQA`s)."""
    dataset = get_dataset(name)
    if set(params) != set(dataset.params):
        raise InvalidInputError(f"data set {name!r} takes the options {list(dataset.params)}, "
                                f"got {sorted(params)}")
    return dataset.load(root, **params)


def _texts(name: str) -> Callable[[str | os.PathLike | None], list[str]]:
    return lambda root: load_text(name, root=root)  # type: ignore[arg-type]


_TRAIN, _EVAL = ("train",), ("bench-qa",)
register_dataset("gutenberg", "text", _texts("gutenberg"), "Project Gutenberg books", uses=_TRAIN)
register_dataset("wikitext2-valid", "text", _texts("wikitext2-valid"), "WikiText-2 validation", uses=_TRAIN)
register_dataset("tinyshakespeare", "text", _texts("tinyshakespeare"), "Tiny Shakespeare", uses=_TRAIN)
# Held out for fidelity and efficiency: never a training source.
register_dataset("wikitext2-test", "text", _texts("wikitext2-test"), "WikiText-2 test", uses=("fidelity",))
register_dataset("jsonl-text", "text", lambda root, path: load_jsonl_text(path),
                 'a user\'s JSONL of {"text"} objects', uses=_TRAIN, params=("path",))
register_dataset("squad-train", "qa", lambda root, squad_version: load_squad("train", version=squad_version, root=root),
                 "SQuAD dev, the 35 training articles", uses=_TRAIN, params=("squad_version",))
register_dataset("jsonl-qa", "qa", lambda root, path: load_jsonl_qa(path),
                 'a user\'s JSONL of {"context", "question", "answer"} objects', uses=_TRAIN, params=("path",))
register_dataset("nq-open-oracle", "qa", _nq_open_oracle, "NQ-open with its gold passage", uses=_TRAIN)
register_dataset("qed-nq-dev", "qa", _qed, "QED (NQ dev)", uses=_TRAIN)
register_dataset("boolq-dev", "qa", _boolq, "BoolQ dev", uses=_TRAIN)
register_dataset("pubmedqa", "qa", _pubmedqa, "PubMedQA (PQA-L)", uses=_TRAIN)
register_dataset("clapnq-dev", "qa", _clapnq, "CLAPNQ dev", uses=_TRAIN)
# `icae-rag bench qa` data sets; squad, nq, covid and techdocs are its defaults, in report order.
register_dataset("squad", "qa", lambda root: load_squad("heldout", root=root),
                 "SQuAD v1.1 dev, the 13 held-out articles (never trained on)",
                 uses=("bench-qa", "bench-qa-default", "rag"))
register_dataset("nq", "qa", _nq_open_oracle,
                 "NQ-open oracle passages (not a training source of the shipped checkpoints)",
                 uses=("bench-qa", "bench-qa-default"), bench_limit=30)
# Small by default: the raw and LongLLMLingua modes read five 512-token passages per question.
register_dataset("covid", "longqa", lambda root: load_covid_qa(root=root), "COVID-QA (evaluation only)",
                 uses=("bench-qa", "bench-qa-default", "rag"), bench_limit=6)
# Shipped with the package (icae_rag/data/techdocs), so the data root is not read.
register_dataset("techdocs", "longqa", lambda root: load_techdocs("test"),
                 "Technical documentation (man pages, Python docs; evaluation only)",
                 uses=("bench-qa", "bench-qa-default", "rag"), bench_limit=6)
register_dataset("techdocs-dev", "longqa", lambda root: load_techdocs("dev"),
                 "Technical documentation, dev split (other documents; calibration only, never for reported results)",
                 uses=("bench-qa", "rag"), bench_limit=6)
register_dataset("xquad-en", "qa", _xquad, "XQuAD English (a subset of SQuAD v1.1 dev)", uses=_EVAL)
register_dataset("hotpotqa", "qa", _hotpotqa, "HotpotQA, 100 dev questions with distractor paragraphs",
                 uses=_EVAL)
register_dataset("squality", "longqa", lambda root: load_squality("test", root=root),
                 "SQuALITY test (long stories, summary-style answers)", uses=("bench-qa", "rag"), bench_limit=6)
register_dataset("qmsum", "longqa", lambda root: load_qmsum("test", root=root),
                 "QMSum test (meeting transcripts, summary-style answers)", uses=("bench-qa", "rag"),
                 bench_limit=6)
