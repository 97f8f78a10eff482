"""Deprecated alias of icae_rag.data.chunking (removed in the next release)."""

from ._alias import deprecated
from .data.chunking import *  # noqa: F403

__getattr__ = deprecated(__name__)
