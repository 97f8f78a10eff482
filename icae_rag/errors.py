"""Typed errors raised by icae_rag; every message says what went wrong and what to do."""

from __future__ import annotations


class IcaeRagError(Exception):
    """Base class of every error icae_rag raises on purpose."""


class InvalidInputError(IcaeRagError, ValueError):
    """An argument has the wrong type or value (empty text, unknown option, ...)."""


class UnknownCompressorError(InvalidInputError):
    """A compressor kind that is not registered was asked for."""


class DeviceError(InvalidInputError):
    """A device or dtype that this machine or combination does not support."""


class BackboneMismatchError(IcaeRagError):
    """A checkpoint or memory was made for another backbone than the one loaded."""


class CheckpointError(IcaeRagError):
    """A checkpoint directory is missing, incomplete or from an incompatible version."""


class CorruptFileError(IcaeRagError):
    """A file exists but cannot be read: truncated, corrupted or of the wrong format."""


class MissingFileError(IcaeRagError, FileNotFoundError):
    """A file or directory the caller named does not exist."""


class ModelNotFoundError(IcaeRagError):
    """An embedded default model package is not installed."""


class ConfigError(InvalidInputError):
    """A configuration file or dict has unknown keys, missing keys or bad values."""


class DataError(InvalidInputError):
    """A dataset is missing, empty or does not have the expected schema."""


class UnsupportedModelError(InvalidInputError):
    """The decoder lacks what an operation needs (e.g. rotary positions for kvzip memories)."""


class EmptyTextError(InvalidInputError):
    """A text, question or file holds nothing but whitespace."""


class NotTextError(DataError):
    """A file or string is not text: bytes that are not UTF-8, NUL bytes, or mostly control characters."""


class NotAFileError(InvalidInputError):
    """A path names a directory or a special file where a regular file is needed."""


class ContextTooLongError(InvalidInputError):
    """A context needs more decoder positions than the decoder has."""


class UsageError(InvalidInputError):
    """The command line is malformed: an unknown option, a missing argument or a value not allowed."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class PluginError(InvalidInputError):
    """An installed plugin (an `icae_rag.compressors` or `icae_rag.datasets` entry point) could not
    be loaded, or does not name what its group needs."""
