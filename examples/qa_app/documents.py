"""Uploaded files -> plain text: filename checks, a size-capped reader, and .txt/.md/.pdf/.html extraction.

Every rejection is an `UploadError` carrying the HTTP status the app answers with, and a message
meant for the person who uploaded the file.
"""

from __future__ import annotations

import html.parser
import io
import re
from collections.abc import AsyncIterator

from icae_rag.errors import InvalidInputError, NotTextError
from icae_rag.text import check_not_binary, decode_text

SUPPORTED = {".txt": "text", ".md": "markdown", ".pdf": "pdf", ".html": "html", ".htm": "html"}
MAX_NAME_CHARS = 255
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UploadError(InvalidInputError):
    """An upload the app refuses; `status` is the HTTP status it is answered with."""

    status = 400


class UploadTooLargeError(UploadError):
    """The upload is larger than the configured limit."""

    status = 413


class UnsupportedTypeError(UploadError):
    """The file extension is not one the app can read."""

    status = 415


def safe_display_name(filename: str | None) -> str:
    """The basename of an uploaded file's name, or UploadError for empty, absolute or `..` names.

    The name is only ever shown to users; files are stored under generated names.
    """
    name = (filename or "").strip()
    if not name:
        raise UploadError("the file has no name: give it one, e.g. notes.txt")
    if _CONTROL.search(name):
        raise UploadError("the file name contains control characters: rename the file")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UploadError(f"absolute paths are not accepted as file names: {name!r}")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise UploadError(f"'..' is not accepted in a file name: {name!r}")
    base = parts[-1].strip()
    if base in ("", "."):
        raise UploadError(f"{name!r} names a directory, not a file")
    if len(base) > MAX_NAME_CHARS:
        raise UploadError(f"the file name is longer than {MAX_NAME_CHARS} characters: shorten it")
    return base


def file_kind(name: str) -> tuple[str, str]:
    """(extension, kind) of a display name, or UnsupportedTypeError."""
    ext = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if ext not in SUPPORTED:
        raise UnsupportedTypeError(
            f"{name!r}: unsupported file type {ext or '(no extension)'}; upload {', '.join(sorted(SUPPORTED))} files")
    return ext, SUPPORTED[ext]


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body of a chunk stream, refusing it as soon as it passes `limit` bytes."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise UploadTooLargeError(f"the file is larger than the upload limit of {format_bytes(limit)}")
    return bytes(buf)


def format_bytes(n: int) -> str:
    """A human-readable size: 10 MB, 512 KB, 12 bytes."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.3g} MB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.3g} KB"
    return f"{n} bytes"


def extract_text(name: str, data: bytes) -> str:
    """The text of an uploaded file, whitespace-trimmed; UploadError if it is empty, binary or malformed."""
    _, kind = file_kind(name)
    if not data:
        raise UploadError(f"{name!r} is empty")
    if kind == "pdf":
        text = _pdf_text(name, data)
    else:
        decoded = _decode_text(name, data)
        text = _html_text(name, decoded) if kind == "html" else decoded
    text = text.strip()
    if not text:
        raise UploadError(f"{name!r} contains no text to index")
    try:
        check_not_binary(text, what=f"file {name!r}")
    except NotTextError as e:
        raise UploadError(str(e)) from None
    return text


def _decode_text(name: str, data: bytes) -> str:
    # The library's check, so the CLI, the library and the app refuse the same bytes the same way.
    try:
        return decode_text(data, what=f"file {name!r}")
    except NotTextError as e:
        raise UploadError(str(e)) from None


def _pdf_text(name: str, data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.lstrip()[:5] == b"%PDF-":
        raise UploadError(f"{name!r} is not a PDF file (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UploadError(f"{name!r} is an encrypted PDF: upload an unencrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except UploadError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as e:
        # pypdf reports damaged files through several exception types; all mean "cannot read it".
        raise UploadError(f"{name!r} is a malformed PDF that cannot be read ({type(e).__name__}: {e})") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise UploadError(f"{name!r} has no extractable text (a scanned PDF?): upload a text PDF or a .txt")
    return text


_SKIP = {"script", "style", "noscript", "template", "svg"}
_BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
          "article", "header", "footer", "pre", "blockquote", "hr", "title", "dt", "dd"}


class _TextExtractor(html.parser.HTMLParser):
    """Collects the visible text of an HTML page; script/style contents are dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.tags = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self.tags += 1
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _html_text(name: str, source: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(source)
        parser.close()
    except (AssertionError, ValueError) as e:  # html.parser's reactions to broken markup
        raise UploadError(f"{name!r} is malformed HTML that cannot be parsed ({e})") from None
    if parser.tags == 0:
        raise UploadError(f"{name!r} is not HTML (no tags found): upload it as .txt")
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
