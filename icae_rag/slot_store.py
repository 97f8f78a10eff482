"""Deprecated alias of icae_rag.stores.sqlite (removed in the next release)."""

from ._alias import deprecated
from .stores.sqlite import *  # noqa: F403

__getattr__ = deprecated(__name__)
