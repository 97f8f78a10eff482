"""IcaeRagSynthesizer on tiny random backbones (ICAE, E2LLM and the default kvzip): memory hand-off, raw nodes,
errors, streaming, prompts."""

from __future__ import annotations

import asyncio
import logging

import pytest
from li_helpers import GatedStream, make_nodes, spy_compress
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.postprocessor.icae_rag import (
    MEMORY_KEY,
    IcaeRagPostprocessor,
    IcaeRagSynthesizer,
    best_last,
)

from conftest import same_memory
from icae_rag.errors import BackboneMismatchError, InvalidInputError
from icae_rag.memories.base import Memory
from icae_rag.memories.soft_prompt import SoftPrompt, text_sha256
from icae_rag.stores import SqliteMemoryStore

QUESTION = "When did Apollo 11 land on the Moon?"


def test_answers_from_the_postprocessors_memories_without_compressing_again(tiny_memory_kind, monkeypatch):
    calls = spy_compress(tiny_memory_kind, monkeypatch)
    nodes = IcaeRagPostprocessor(tiny_memory_kind).postprocess_nodes(make_nodes())
    assert calls == [4]
    synth = IcaeRagSynthesizer(tiny_memory_kind, max_new_tokens=6)
    contexts = synth.contexts(nodes)
    assert calls == [4], "the synthesizer takes the postprocessor's memories from its cache"
    assert all(isinstance(c, Memory) and c.compressor == tiny_memory_kind.kind for c in contexts)
    assert [c.pieces[0].source_sha256 for c in contexts] == [
        text_sha256(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in best_last(nodes)]
    response = synth.synthesize(QUESTION, nodes)
    assert isinstance(response, Response)
    assert response.response == tiny_memory_kind.answer(QUESTION, contexts, max_new_tokens=6).text
    assert [n.node.node_id for n in response.source_nodes] == ["n0", "n1", "n2", "n3"]
    assert [n.score for n in response.source_nodes] == [0.2, 0.9, None, 0.5]


def test_raw_nodes_are_read_as_text_and_unmarked_nodes_compressed_on_the_fly(tiny_e2llm, tmp_path):
    nodes = IcaeRagPostprocessor(tiny_e2llm, keep_top_raw=1).postprocess_nodes(make_nodes())
    store = SqliteMemoryStore(tmp_path)
    synth = IcaeRagSynthesizer(tiny_e2llm, store)
    contexts = synth.contexts(nodes)
    # Read highest-scored last: n2 (no score), n0 (0.2), n3 (0.5), n1 (0.9, kept raw).
    assert contexts[-1] == nodes[1].node.get_content(metadata_mode=MetadataMode.LLM), "n1 was kept raw"
    assert [type(c) for c in contexts] == [SoftPrompt, SoftPrompt, SoftPrompt, str]
    plain = [NodeWithScore(node=TextNode(text="Columbia orbited the Moon.", id_="p"), score=1.0)]
    assert isinstance(synth.contexts(plain)[0], SoftPrompt)
    assert store.has("Columbia orbited the Moon.", tiny_e2llm), "compressed on the fly into the store"
    # Called directly with text chunks only (no nodes), every chunk is read as a soft prompt.
    assert isinstance(synth.get_response("Who orbited?", ["Columbia orbited the Moon.", "Eagle landed."]), str)
    assert store.has("Eagle landed.", tiny_e2llm)


def test_nodes_are_read_highest_scored_last_unless_asked_otherwise(tiny_raw):
    nodes = make_nodes()  # scores 0.2, 0.9, None, 0.5
    assert [n.node.node_id for n in best_last(nodes)] == ["n2", "n0", "n3", "n1"]
    tie = [NodeWithScore(node=TextNode(text=t, id_=t), score=0.5) for t in ("a", "b")]
    assert [n.node.node_id for n in best_last(tie)] == ["a", "b"], "equal scores keep the given order"
    sha = [text_sha256(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in nodes]

    def read(synth: IcaeRagSynthesizer) -> list[str]:
        return [c.pieces[0].source_sha256 for c in synth.contexts(nodes)]

    assert read(IcaeRagSynthesizer(tiny_raw)) == [sha[2], sha[0], sha[3], sha[1]]
    assert read(IcaeRagSynthesizer(tiny_raw, best_last=False)) == sha


@pytest.mark.parametrize("made_by,read_by", [("tiny_icae", "tiny_e2llm"), ("tiny_kvzip", "tiny_icae"),
                                             ("tiny_icae", "tiny_kvzip")])
def test_nodes_compressed_by_another_compressor_are_refused(made_by, read_by, request):
    nodes = IcaeRagPostprocessor(request.getfixturevalue(made_by)).postprocess_nodes(make_nodes())
    with pytest.raises(BackboneMismatchError, match="pass the same compressor"):
        IcaeRagSynthesizer(request.getfixturevalue(read_by)).synthesize(QUESTION, nodes)


def test_text_changed_after_compression_is_compressed_again(tiny_memory_kind, caplog):
    nodes = IcaeRagPostprocessor(tiny_memory_kind).postprocess_nodes(make_nodes()[:1])
    edited = [NodeWithScore(node=nodes[0].node.model_copy(update={"text": "Edited text about Apollo."}), score=0.1)]
    with caplog.at_level(logging.WARNING):
        contexts = IcaeRagSynthesizer(tiny_memory_kind).contexts(edited)
    assert "changed after it was compressed" in caplog.text
    assert contexts[0].pieces[0].source_sha256 == text_sha256(edited[0].node.get_content(metadata_mode=MetadataMode.LLM))


def test_bad_queries_and_nodes_without_text(tiny_raw, caplog):
    nodes = IcaeRagPostprocessor(tiny_raw).postprocess_nodes(make_nodes()[:1])
    synth = IcaeRagSynthesizer(tiny_raw, max_new_tokens=4)
    with pytest.raises(InvalidInputError, match="query is empty"):
        synth.synthesize("  ", nodes)
    with pytest.raises(InvalidInputError, match="needs a query"):
        synth.synthesize(None, nodes)
    with pytest.raises(InvalidInputError, match="unknown response options"):
        synth.synthesize(QUESTION, nodes, temperature=0.2)
    empty = [NodeWithScore(node=TextNode(text=" ", id_="e"), score=1.0)]
    with caplog.at_level(logging.WARNING):
        assert synth.synthesize(QUESTION, empty).response == "Empty Response"
    assert "instead of a closed-book answer" in caplog.text
    streaming = IcaeRagSynthesizer(tiny_raw, streaming=True)
    assert list(streaming.synthesize(QUESTION, empty).response_gen) == ["Empty Response"]
    with pytest.raises(InvalidInputError, match="valid generation options"):
        IcaeRagSynthesizer(tiny_raw, max_tokens=5)


def test_streaming_sync_and_async(tiny_memory_kind, monkeypatch):
    nodes = IcaeRagPostprocessor(tiny_memory_kind).postprocess_nodes(make_nodes())
    full = IcaeRagSynthesizer(tiny_memory_kind, max_new_tokens=12).synthesize(QUESTION, nodes).response
    synth = IcaeRagSynthesizer(tiny_memory_kind, streaming=True, max_new_tokens=12)
    gate = GatedStream(tiny_memory_kind, monkeypatch)
    response = synth.synthesize(QUESTION, nodes)
    assert isinstance(response, StreamingResponse)
    chunks = [gate.first_piece_while_decoding(response.response_gen), *response.response_gen]
    assert len(chunks) > 1 and gate.finished.is_set()
    assert "".join(chunks).strip() == full
    assert [n.node.node_id for n in response.source_nodes] == ["n0", "n1", "n2", "n3"]

    async def run() -> list[str]:
        answer = await synth.asynthesize(QUESTION, nodes)
        assert isinstance(answer, AsyncStreamingResponse)
        return [c async for c in answer.async_response_gen()]

    assert "".join(asyncio.run(run())).strip() == full


def test_a_stream_that_ends_at_once_gives_the_empty_response(tiny_raw, monkeypatch):
    nodes = IcaeRagPostprocessor(tiny_raw).postprocess_nodes(make_nodes()[:1])
    monkeypatch.setattr(tiny_raw, "stream", lambda question, contexts, **kw: iter(()))
    synth = IcaeRagSynthesizer(tiny_raw, streaming=True)
    assert list(synth.synthesize(QUESTION, nodes).response_gen) == ["Empty Response"]

    async def run() -> list[str]:
        return [c async for c in (await synth.asynthesize(QUESTION, nodes)).async_response_gen()]

    assert asyncio.run(run()) == ["Empty Response"]


def test_closing_a_stream_early_releases_the_compressor(tiny_memory_kind):
    expected = tiny_memory_kind.compress("After the stream.")
    nodes = IcaeRagPostprocessor(tiny_memory_kind).postprocess_nodes(make_nodes()[:1])
    synth = IcaeRagSynthesizer(tiny_memory_kind, streaming=True, max_new_tokens=200)
    gen = synth.synthesize(QUESTION, nodes).response_gen
    next(gen)
    gen.close()
    # The worker stops after the current token, leaves decoding mode (ICAE decodes with its LoRA off) and
    # releases the lock.
    lock = synth._cache.lock
    assert lock.acquire(timeout=30)
    lock.release()
    assert same_memory(tiny_memory_kind.compress("After the stream."), expected), "compressing as before (ICAE: LoRA on)"
    fresh = IcaeRagSynthesizer(tiny_memory_kind, max_new_tokens=4)
    again = fresh.synthesize(QUESTION, nodes)
    assert again.response == tiny_memory_kind.answer(QUESTION, fresh.contexts(nodes), max_new_tokens=4).text


def test_question_template_through_the_prompt_mixin(tiny_raw, monkeypatch):
    nodes = IcaeRagPostprocessor(tiny_raw).postprocess_nodes(make_nodes()[:1])
    synth = IcaeRagSynthesizer(tiny_raw, max_new_tokens=4)
    assert list(synth.get_prompts()) == ["question_template"]
    asked = []
    original = tiny_raw.answer
    monkeypatch.setattr(tiny_raw, "answer", lambda q, ctx, **kw: asked.append(q) or original(q, ctx, **kw))
    synth.update_prompts({"question_template": "{query_str} Reply in one word.", "unknown": "ignored {x}"})
    synth.synthesize(QUESTION, nodes)
    assert asked == [f"{QUESTION} Reply in one word."]
    assert synth.get_prompts()["question_template"].template == "{query_str} Reply in one word."
    with pytest.raises(InvalidInputError, match="exactly the variable"):
        synth.update_prompts({"question_template": "Context: {context_str}\n{query_str}"})
    assert nodes[0].node.metadata[MEMORY_KEY] != "raw"
