"""Deprecated alias of icae_rag.stores.base (removed in the next release)."""

from ._alias import deprecated
from .stores.base import *  # noqa: F403

__getattr__ = deprecated(__name__)
