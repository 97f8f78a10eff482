"""Reading data files: the records, the data folder, JSON checks, plain text and users' JSONL (no torch).

Every reader returns plain frozen records (`QAExample`, `LongDocQA`, or documents as str) and raises
`DataError` / `MissingFileError` with the file, the place in it and the fix; no malformed record is
ever skipped silently. The helpers with a leading underscore (`_resolve`, `_read_jsonl`, `_get`,
...) are shared by the readers of `icae_rag.data.qa` and `icae_rag.data.longqa`, not public.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..errors import DataError, InvalidInputError, MissingFileError
from ..text import read_text

__all__ = [
    "DATA_ENV_VAR",
    "TEXT_NAMES",
    "LongDocQA",
    "QAExample",
    "default_data_root",
    "load_jsonl_qa",
    "load_jsonl_text",
    "load_text",
    "read_text_file",
    "split_documents",
]

T = TypeVar("T")

DATA_ENV_VAR = "ICAE_RAG_DATA"

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

