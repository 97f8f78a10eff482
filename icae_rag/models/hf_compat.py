"""What differs between the transformers releases that pyproject allows.

transformers 5.24 renamed a decoder's KV cache, as forward argument and as output field, from
`past_key_values` to `cache`; the old name still works there, with a FutureWarning and a logged
deprecation, and is due to go in 5.40. Code that hands a cache to a decoder or reads the one it
returned goes through `cache_arg` and `output_cache`, which use the installed release's name.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def cache_name() -> str:
    """`cache` where transformers' model outputs have that field (5.24 on), else `past_key_values`."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_arg(cache: Any) -> dict[str, Any]:
    """The keyword argument that hands `cache` to a decoder's forward: `model(..., **cache_arg(c))`."""
    return {cache_name(): cache}


def output_cache(out: Any) -> Any:
    """The cache that a decoder's forward returned (with `use_cache=True`)."""
    return getattr(out, cache_name())
