"""Checks on the texts every entry point takes (documents, questions, contexts)."""

from __future__ import annotations

from .errors import InvalidInputError


def check_text(text: object) -> str:
    """Validate one input text: a non-empty, non-whitespace str."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError("text is empty or only whitespace: pass the document's text")
    return text
