"""Checks on the texts every entry point takes (documents, questions, contexts), and a checked file reader.

The CLI, the library and the QA app share these, so one input is refused the same way everywhere,
before any model loads (this module imports no torch).
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import EmptyTextError, InvalidInputError, MissingFileError, NotAFileError, NotTextError

# C0 controls and DEL, except the whitespace ones (tab, newline, vertical tab, form feed, carriage
# return) that real text files contain.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
# Binary data shows itself early, so the control-character share is judged on the first characters
# only: a constant cost however long the text is.
BINARY_SAMPLE_CHARS = 64 * 1024
# Man pages rendered with overstrike bold hold backspaces (one per bold letter); binaries decoded
# as text are mostly control characters. 30% separates the two.
MAX_CONTROL_SHARE = 0.3
READ_BLOCK_BYTES = 1 << 20


def check_text(text: object, what: str = "text") -> str:
    """Validate one input text: a str that is not empty or whitespace and not binary; `what` names it in errors."""
    if not isinstance(text, str):
        raise InvalidInputError(f"the {what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise EmptyTextError(f"the {what} is empty or only whitespace: pass a non-empty {what}")
    check_not_binary(text, what)
    return text


def check_not_binary(text: str, what: str = "text") -> None:
    """Raise NotTextError if `text` holds NUL characters or is mostly control characters."""
    nul = text.find("\x00")
    if nul >= 0:
        raise NotTextError(f"the {what} contains a NUL character (at character {nul}): it is binary data, "
                           "not text; pass a UTF-8 text file")
    sample = text[:BINARY_SAMPLE_CHARS]
    controls = len(_CONTROL.findall(sample))
    if sample and controls / len(sample) > MAX_CONTROL_SHARE:
        raise NotTextError(f"the {what} is {controls / len(sample):.0%} control characters in its first "
                           f"{len(sample)} characters: it is binary data, not text; pass a UTF-8 text file")


def decode_text(data: bytes, what: str = "file") -> str:
    """Bytes -> str as strict UTF-8 (a leading BOM dropped), with NotTextError naming the first bad byte."""
    _refuse_nul(data, 0, f"the {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise NotTextError(_not_utf8(f"the {what}", e.start, data[e.start : e.start + 4])) from None


def check_file(path: str | os.PathLike) -> Path:
    """The path, if it names an existing regular file; MissingFileError or NotAFileError otherwise."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist: check the path")
    if path.is_dir():
        raise NotAFileError(f"{path} is a directory: pass a file inside it")
    if not path.is_file():
        raise NotAFileError(f"{path} is not a regular file (a device, socket or pipe?): pass a file")
    return path


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a leading BOM dropped), decoded strictly in 1 MB blocks; typed errors
    for a missing path, a directory, NUL bytes or bytes that are not UTF-8."""
    path = check_file(path)
    # Strict incremental decoding: a bad byte is reported with its offset as soon as its block is
    # read, and no second copy of a large file's bytes is held.
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    parts: list[str] = []
    offset = 0
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK_BYTES):
            _refuse_nul(block, offset, str(path))
            try:
                parts.append(decoder.decode(block))
            except UnicodeDecodeError as e:
                raise NotTextError(_not_utf8(str(path), offset + e.start, block[e.start : e.start + 4])) from None
            offset += len(block)
        try:
            parts.append(decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            raise NotTextError(f"{path} ends inside a UTF-8 character: it is truncated or not UTF-8; "
                               "re-save it as UTF-8") from None
    return "".join(parts)


def read_document(path: str | os.PathLike) -> str:
    """The checked text of a document file: `read_text`, and not empty, whitespace or binary."""
    text = read_text(path)
    if not text.strip():
        raise EmptyTextError(f"{path} is empty or only whitespace ({Path(path).stat().st_size} bytes): "
                             "pass a file with text in it")
    check_not_binary(text, str(path))
    return text


def _refuse_nul(block: bytes, offset: int, what: str) -> None:
    # NUL bytes never occur in UTF-8 text files; they mark binaries (or UTF-16) renamed to .txt.
    nul = block.find(b"\0")
    if nul >= 0:
        raise NotTextError(f"{what} contains NUL bytes (first at byte {offset + nul}): it is a binary file, "
                           f"not text{_utf16_hint(offset, block)}; pass a UTF-8 text file")


def _not_utf8(what: str, offset: int, head: bytes) -> str:
    return (f"{what} is not UTF-8 text: undecodable byte {head[:1]!r} at byte {offset}"
            f"{_utf16_hint(offset, head)}; re-save it as UTF-8")


def _utf16_hint(offset: int, head: bytes) -> str:
    utf16 = offset == 0 and head[:2] in (b"\xff\xfe", b"\xfe\xff")
    return " (it starts like UTF-16: re-save it as UTF-8)" if utf16 else ""


def check_texts_and_leads(texts: Sequence[str], leads: Sequence[str | None] | None) -> list[str]:
    """The checked texts of a `compress_many` call; raises unless there is one lead (or None) per text."""
    if isinstance(texts, str):
        raise InvalidInputError("compress_many takes a list of texts; use compress() for one")
    texts = [check_text(t) for t in texts]
    if leads is not None and (isinstance(leads, str) or len(leads) != len(texts)):
        raise InvalidInputError(f"{len(texts)} texts need {len(texts)} leads (a lead, or None, per text)")
    return texts
