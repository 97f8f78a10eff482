"""The project's own decoder calls use the installed transformers' name for the KV cache."""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings

import torch

from conftest import TEXT
from icae_rag import new_compressor
from icae_rag.models.backbones import TINY_DECODER
from icae_rag.models.hf_compat import cache_arg, cache_name, output_cache


@contextlib.contextmanager
def cache_deprecations():
    """Yield a list that gets every warning or transformers log record naming the old cache names."""
    from transformers.utils import logging as hf_logging

    found: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record):
            found.append(record.getMessage())

    hf_logging.warning_once.cache_clear()  # a message logged once before would not be logged again
    handler, hf_logger = Handler(level=logging.WARNING), logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        hf_logger.removeHandler(handler)
        found.extend(str(w.message) for w in caught)
        found[:] = [m for m in found if "past_key_values" in m or "cache_params" in m]


def test_the_cache_name_is_the_decoder_forwards_keyword(tiny_raw):
    forward = inspect.signature(type(tiny_raw.decoder.model).forward).parameters
    assert cache_name() in forward
    model, ids = tiny_raw.decoder.model, torch.tensor([tiny_raw.tokenize(TEXT)])
    with torch.no_grad():
        cache = output_cache(model(input_ids=ids[:, :-1], use_cache=True))
        assert cache.get_seq_length() == ids.shape[1] - 1
        out = model(input_ids=ids[:, -1:], **cache_arg(cache), use_cache=True)
    assert output_cache(out).get_seq_length() == ids.shape[1]


def test_compressing_and_answering_use_no_deprecated_cache_name(tiny_raw):
    kvzip = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4)
    with cache_deprecations() as found:
        memory = kvzip.compress(TEXT)
        kvzip.answer("Who stayed in orbit?", [memory, "Apollo 11 landed in 1969."], max_new_tokens=3)
        tiny_raw.answer_many(["When?", "Who?"], [[TEXT], ["Apollo 11 landed in 1969."]], max_new_tokens=3)
    assert found == []
    if cache_name() != "past_key_values":  # the check sees the old name where it is deprecated
        with cache_deprecations() as found, torch.no_grad():
            out = tiny_raw.decoder.model(input_ids=torch.tensor([[1, 2]]), use_cache=True)
            tiny_raw.decoder.model(input_ids=torch.tensor([[3]]), past_key_values=output_cache(out), use_cache=True)
        assert found
