"""Shared fixtures: tiny random backbones (seconds) and, for integration tests, the real defaults."""

from __future__ import annotations

import copy

import pytest

from icae_rag import new_compressor
from icae_rag.backbones import TINY_DECODER, TINY_ENCODER

TINY_ICAE = dict(decoder=TINY_DECODER, span_tokens=32, ratio=4, lora_r=4, lora_alpha=8)
TINY_E2LLM = dict(decoder=TINY_DECODER, encoder=TINY_ENCODER, chunk_tokens=24, soft_tokens_per_chunk=2,
                  adapter_hidden=32)
TEXT = (
    "The Apollo program was the third United States human spaceflight program. It landed the "
    "first humans on the Moon in 1969. Apollo 11 carried Neil Armstrong and Buzz Aldrin. "
    "Michael Collins stayed in lunar orbit while they walked on the surface! Was it worth it? "
    "Most historians say yes.\n\nThe program ran from 1961 to 1972 and cost about 25 billion dollars."
)


@pytest.fixture(scope="session")
def _icae_proto():
    return new_compressor("icae", device="cpu", **TINY_ICAE)


@pytest.fixture(scope="session")
def _e2llm_proto():
    return new_compressor("e2llm", device="cpu", **TINY_E2LLM)


@pytest.fixture(scope="session")
def _raw_proto():
    return new_compressor("raw", device="cpu", decoder=TINY_DECODER)


@pytest.fixture
def tiny_icae(_icae_proto):
    """A fresh copy of an untrained tiny ICAE compressor (tests may mutate it)."""
    return copy.deepcopy(_icae_proto)


@pytest.fixture
def tiny_e2llm(_e2llm_proto):
    """A fresh copy of an untrained tiny E2LLM compressor."""
    return copy.deepcopy(_e2llm_proto)


@pytest.fixture
def tiny_raw(_raw_proto):
    """The raw-text baseline on the tiny decoder."""
    return _raw_proto


@pytest.fixture(params=["icae", "e2llm", "raw"])
def tiny_compressor(request):
    """Each compressor kind in turn, on tiny backbones."""
    return request.getfixturevalue(f"tiny_{request.param}")


def spy_compress(compressor, monkeypatch) -> list[int]:
    """Record the number of texts of every compress_many call on this compressor object."""
    calls: list[int] = []
    original = compressor.compress_many

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(compressor, "compress_many", counting)
    return calls


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the whole session (start-up paid once): 2 CPUs, no dashboard."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()
