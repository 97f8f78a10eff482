"""Acceptance: a compressor kind and a data set registered here alone reach every command and app."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding

from conftest import TEXT
from icae_rag.compressors import RawTextCompressor, register_compressor
from icae_rag.compressors import base as compressor_registry
from icae_rag.data import QAExample, register_dataset
from icae_rag.data import registry as dataset_registry
from icae_rag.models.backbones import TINY_DECODER


@dataclass
class ToyConfig:
    """The toy kind reads with the tiny decoder."""

    decoder: str = TINY_DECODER


class ToyCompressor(RawTextCompressor):
    """A compressor at ratio 1: its soft prompts are the text's own token embeddings."""

    reads_text = False


def _toy_examples(root) -> list[QAExample]:
    return [QAExample("t1", TEXT, "When did Apollo 11 land?", ("1969",)),
            QAExample("t2", TEXT, "Who stayed in lunar orbit?", ("Michael Collins",))]


@pytest.fixture
def toy():
    """The toy kind and the toy data set, registered for one test."""
    register_compressor("toy", ToyConfig, ToyCompressor)
    register_dataset("toy-qa", "qa", _toy_examples, "two questions on the Apollo text", uses=("bench-qa",),
                     bench_limit=2)
    yield
    del compressor_registry._REGISTRY["toy"]
    del dataset_registry._DATASETS["toy-qa"]


def test_ask_offers_and_runs_the_toy_kind(toy, tmp_path, capsys):
    from icae_rag.cli import main

    context = tmp_path / "apollo.txt"
    context.write_text(TEXT, encoding="utf-8")
    assert main(["ask", "--compressor", "toy", "--context", str(context), "--device", "cpu", "--json",
                 "--max-new-tokens", "2", "When did Apollo 11 land?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["compressor"] == "toy" and out["context_positions"] == out["input_tokens"] > 0


def test_bench_qa_offers_and_runs_the_toy_kind_on_the_toy_dataset(toy, tmp_path, capsys):
    from icae_rag.cli import build_parser, main

    args = build_parser().parse_args(["bench", "qa", "--compressor", "toy", "--dataset", "toy-qa"])
    assert (args.compressor, args.dataset) == (["toy"], ["toy-qa"])
    out = tmp_path / "bench"
    assert main(["bench", "qa", "--compressor", "toy", "--dataset", "toy-qa", "--no-longllmlingua",
                 "--device", "cpu", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())["qa"]["toy-qa"]
    assert set(results["results"]) == {"raw", "none", "toy"}
    assert results["record"]["n"] == 2 and results["record"]["split"] == "two questions on the Apollo text"


def test_the_llamaindex_engine_takes_the_toy_kind(toy):
    from llama_index.postprocessor.icae_rag import IcaeRagPostprocessor, build_query_engine

    index = VectorStoreIndex.from_documents([Document(text=TEXT)], embed_model=MockEmbedding(embed_dim=8))
    engine = build_query_engine(index, "toy", device="cpu", generation={"max_new_tokens": 2})
    response = engine.query("When did Apollo 11 land?")
    synth = engine._response_synthesizer
    assert synth.compressor.kind == "toy"
    contexts = synth.contexts(response.source_nodes)
    assert response.source_nodes and [type(c).__name__ for c in contexts] == ["SoftPrompt"]
    assert str(response) == synth.compressor.answer("When did Apollo 11 land?", contexts, max_new_tokens=2).text
    post = IcaeRagPostprocessor("toy", device="cpu")
    assert post.compressor.kind == "toy" and post.compressor_name == "toy"
    with pytest.raises(ValueError, match="'toy'"):
        IcaeRagPostprocessor(42)


def test_the_qa_app_offers_the_toy_kind(toy):
    from examples.qa_app.app import parse_args

    settings, _, _ = parse_args(["--compressor", "toy"])
    assert settings.compressor == "toy"


def test_kinds_and_datasets_are_read_when_asked(toy):
    from icae_rag.compressors import compressor_kinds
    from icae_rag.data import dataset_names
    from icae_rag.eval.bench import BenchOptions

    assert "toy" in compressor_kinds(reads_text=False) and "toy" not in compressor_kinds(trainable=True)
    assert "toy-qa" in dataset_names(use="bench-qa") and "toy-qa" not in BenchOptions("qa").datasets
