"""Deprecated alias of icae_rag.stores.lance (removed in the next release)."""

from ._alias import deprecated
from .stores.lance import *  # noqa: F403

__getattr__ = deprecated(__name__)
