"""Deprecated alias of icae_rag.data (removed in the next release): the registry and its readers."""

from ._alias import deprecated
from .data.longqa import *  # noqa: F403
from .data.qa import *  # noqa: F403
from .data.readers import *  # noqa: F403
from .data.registry import *  # noqa: F403

__getattr__ = deprecated(__name__)
