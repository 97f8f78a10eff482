"""Deprecated alias of icae_rag.indexing (removed in the next release)."""

import warnings

from ._alias import forward
from .indexing import *  # noqa: F403
from .indexing import __all__  # noqa: F401

warnings.warn("icae_rag.distributed is deprecated: import icae_rag.indexing (the alias is removed in the "
              "next release)", DeprecationWarning, stacklevel=2)
__getattr__ = forward(__name__)
