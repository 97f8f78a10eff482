"""Deprecated alias of icae_rag.indexing (removed in the next release)."""

from ._alias import deprecated
from .indexing import *  # noqa: F403

__getattr__ = deprecated(__name__)
