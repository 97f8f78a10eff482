"""Deprecated alias of icae_rag.data.retrieval (removed in the next release)."""

from ._alias import deprecated
from .data.retrieval import *  # noqa: F403

__getattr__ = deprecated(__name__)
