"""Shared fixtures: tiny random backbones (seconds) and, for integration tests, the real defaults."""

from __future__ import annotations

import copy

import pytest
import torch

from icae_rag import new_compressor
from icae_rag.compressors import compressor_kinds
from icae_rag.models.backbones import TINY_DECODER, TINY_ENCODER

TINY_ICAE = dict(decoder=TINY_DECODER, span_tokens=32, ratio=4, lora_r=4, lora_alpha=8)
TINY_E2LLM = dict(decoder=TINY_DECODER, encoder=TINY_ENCODER, chunk_tokens=24, soft_tokens_per_chunk=2,
                  adapter_hidden=32)
TEXT = (
    "The Apollo program was the third United States human spaceflight program. It landed the "
    "first humans on the Moon in 1969. Apollo 11 carried Neil Armstrong and Buzz Aldrin. "
    "Michael Collins stayed in lunar orbit while they walked on the surface! Was it worth it? "
    "Most historians say yes.\n\nThe program ran from 1961 to 1972 and cost about 25 billion dollars."
)


# Tiny settings per kind; `tiny_compressor` runs every registered kind listed here and skips the
# others. "kvzip" is only used where that kind is registered; it keeps a fixed quarter (the adaptive
# budget of a random tiny decoder keeps everything: its tests are in test_kvzip.py).
TINY_CONFIGS = {"icae": TINY_ICAE, "e2llm": TINY_E2LLM, "raw": dict(decoder=TINY_DECODER),
                "kvzip": dict(decoder=TINY_DECODER, ratio=4)}


@pytest.fixture(scope="session")
def _tiny_protos() -> dict:
    """Tiny compressors by kind, each built once per session on first use."""
    return {}


def _proto(kind: str, protos: dict):
    if kind not in protos:
        protos[kind] = new_compressor(kind, device="cpu", **TINY_CONFIGS[kind])
    return protos[kind]


def _tiny(kind: str, protos: dict):
    # A text-reading baseline has no state a test could change; any other kind is copied.
    proto = _proto(kind, protos)
    return proto if proto.reads_text else copy.deepcopy(proto)


@pytest.fixture(scope="session")
def _icae_proto(_tiny_protos):
    """The session's tiny ICAE itself, for module-scoped fixtures (copy it before use)."""
    return _proto("icae", _tiny_protos)


@pytest.fixture
def tiny_icae(_tiny_protos):
    """A fresh copy of an untrained tiny ICAE compressor (tests may mutate it)."""
    return _tiny("icae", _tiny_protos)


@pytest.fixture
def tiny_e2llm(_tiny_protos):
    """A fresh copy of an untrained tiny E2LLM compressor."""
    return _tiny("e2llm", _tiny_protos)


@pytest.fixture
def tiny_raw(_tiny_protos):
    """The raw-text baseline on the tiny decoder."""
    return _tiny("raw", _tiny_protos)


@pytest.fixture
def tiny_kvzip(_tiny_protos):
    """A fresh copy of a tiny kvzip compressor (the default kind) keeping a fixed quarter of the cache."""
    return _tiny("kvzip", _tiny_protos)


@pytest.fixture(params=["icae", "kvzip"])
def tiny_memory_kind(request, _tiny_protos):
    """In turn, a tiny ICAE (a soft prompt) and a tiny kvzip (a KV memory, the default kind).

    For behaviour every memory-making kind must share: the two kinds put memories in the decoder in
    different ways (input embeddings vs. attention keys and values), so both are exercised.
    """
    return _tiny(request.param, _tiny_protos)


@pytest.fixture(params=compressor_kinds())
def tiny_compressor(request, _tiny_protos):
    """Each registered compressor kind in turn, on tiny backbones."""
    if request.param not in TINY_CONFIGS:
        pytest.skip(f"no tiny config for compressor kind {request.param!r}: add one to TINY_CONFIGS in "
                    "tests/conftest.py")
    return _tiny(request.param, _tiny_protos)


def same_memory(a, b) -> bool:
    """Whether two memories hold bit-identical tensors of the same dtypes (any memory kind)."""
    ta, tb = a.tensors(), b.tensors()
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


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
