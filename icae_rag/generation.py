"""Deprecated alias of icae_rag.decoding (removed in the next release)."""

from ._alias import deprecated
from .decoding import *  # noqa: F403

__getattr__ = deprecated(__name__)
