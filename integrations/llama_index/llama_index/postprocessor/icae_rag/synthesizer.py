"""`IcaeRagSynthesizer`: answers by conditioning the decoder on the nodes' memories."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import MockLLM
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.types import RESPONSE_TEXT_TYPE

from icae_rag.compressors import as_compressor
from icae_rag.decoding import GenerationConfig
from icae_rag.errors import BackboneMismatchError, InvalidInputError
from icae_rag.memories.soft_prompt import text_sha256
from icae_rag.serving import MemoryCache, TokenStream
from icae_rag.stores import MemoryKey, as_store

from ._shared import MEMORY_KEY, RAW, UsesCompressor, best_last, node_text, reject_removed_keywords

if TYPE_CHECKING:
    from icae_rag.memories.base import Memory

logger = logging.getLogger(__name__)

DEFAULT_QUESTION_TEMPLATE = PromptTemplate("{query_str}")
_NODES = "icae_rag_nodes"  # response kwarg through which synthesize() hands its nodes to get_response()


class IcaeRagSynthesizer(UsesCompressor, BaseSynthesizer):
    """Answers with the compressor's decoder reading the nodes' memories instead of their text.

    A node marked by `IcaeRagPostprocessor` is read as its memory (from recent memories, then the memory
    store) or, if marked raw, as its text; an unmarked node is compressed on the fly. The decoder's
    question is `question_template` (``{query_str}`` only; key ``"question_template"`` in
    `get_prompts()`); instruction and context layout are `icae_rag.decoding.build_prompt`'s.
    ``best_last=True`` reads the nodes highest-scored last, next to the question (`best_last`);
    False reads them in the order given.
    ``streaming=True`` streams tokens as they are decoded (`query` and `aquery`).

    Errors: an empty query raises InvalidInputError; a node marked by another compressor version or
    decoder raises BackboneMismatchError; a node whose text changed since is compressed again
    (warning); with no node text the answer is the empty response, never a closed-book answer.
    No LlamaIndex LLM is used: a `MockLLM` fills the base class, so `Settings.llm` is never resolved.
    """

    def __init__(self, compressor: Any = None, store: Any = None, *, streaming: bool = False,
                 question_template: BasePromptTemplate | str | None = None, device: str = "auto",
                 batch_size: int = 8, best_last: bool = True, callback_manager: CallbackManager | None = None,
                 **generation: Any) -> None:
        """`compressor`/`store` as for IcaeRagPostprocessor; `generation`: max_new_tokens, do_sample, ..."""
        reject_removed_keywords(generation, type(self).__name__)
        self._generation = dataclasses.asdict(GenerationConfig.from_options(generation))
        super().__init__(llm=MockLLM(), callback_manager=callback_manager, streaming=streaming)
        self._question_template = _check_template(question_template or DEFAULT_QUESTION_TEMPLATE)
        self._batch_size = batch_size
        self._best_last = best_last
        self._cache = MemoryCache(as_compressor(compressor, device=device), as_store(store))

    def _get_prompts(self) -> PromptDictType:
        return {"question_template": self._question_template}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if "question_template" in prompts:
            self._question_template = _check_template(prompts["question_template"])

    def synthesize(self, query: Any, nodes: list[NodeWithScore], additional_source_nodes=None,
                   **response_kwargs: Any) -> RESPONSE_TYPE:
        """As BaseSynthesizer.synthesize; the nodes themselves (not only their text) reach get_response."""
        _check_query(query)
        return super().synthesize(query, nodes, additional_source_nodes, **{_NODES: list(nodes)}, **response_kwargs)

    async def asynthesize(self, query: Any, nodes: list[NodeWithScore], additional_source_nodes=None,
                          **response_kwargs: Any) -> RESPONSE_TYPE:
        """As BaseSynthesizer.asynthesize; the nodes themselves reach aget_response."""
        _check_query(query)
        return await super().asynthesize(query, nodes, additional_source_nodes, **{_NODES: list(nodes)},
                                         **response_kwargs)

    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """The answer (str, or a token generator when streaming) from the nodes' memories."""
        nodes, question = _pop_nodes(response_kwargs), self._question(query_str)
        contexts = self._contexts(nodes, text_chunks)
        if not contexts:
            return self._no_context()
        if self._streaming:
            return self._stream(question, contexts).tokens(self._empty_response)
        return self._answer(question, contexts)

    async def aget_response(self, query_str: str, text_chunks: Sequence[str],
                            **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """As get_response, with compression and decoding off the event loop."""
        nodes, question = _pop_nodes(response_kwargs), self._question(query_str)
        contexts = await asyncio.to_thread(self._contexts, nodes, text_chunks)
        if not contexts:
            return self._no_context(asynchronous=True)
        if self._streaming:
            return self._stream(question, contexts).atokens(self._empty_response)
        return await asyncio.to_thread(self._answer, question, contexts)

    def contexts(self, nodes: Sequence[NodeWithScore]) -> list[Memory | str]:
        """What the decoder reads for these nodes, in reading order: memories, and str for nodes kept raw."""
        ordered = best_last(nodes) if self._best_last else nodes
        kept = [(nws.node, text) for nws in ordered if (text := node_text(nws.node)) is not None]
        identity = self._cache.identity()
        for node, text in kept:
            if node.metadata.get(MEMORY_KEY) not in (None, RAW):
                _check_mark(node.node_id, node.metadata[MEMORY_KEY], text, identity)
        compressed = [text for node, text in kept if node.metadata.get(MEMORY_KEY) != RAW]
        memories = iter(self._cache.resolve(compressed, batch_size=self._batch_size).memories if compressed else [])
        return [text if node.metadata.get(MEMORY_KEY) == RAW else next(memories) for node, text in kept]

    def _contexts(self, nodes: Sequence[NodeWithScore] | None, text_chunks: Sequence[str]) -> list[Memory | str]:
        """The nodes' contexts; without nodes, every non-empty text chunk as a memory."""
        if nodes is not None:
            return self.contexts(nodes)
        texts = [t for t in text_chunks if isinstance(t, str) and t.strip()]
        if len(texts) < len(text_chunks):
            logger.warning("%d empty text chunks are left out of the context", len(text_chunks) - len(texts))
        return list(self._cache.resolve(texts, batch_size=self._batch_size).memories) if texts else []

    def _question(self, query_str: str) -> str:
        if not isinstance(query_str, str) or not query_str.strip():
            raise InvalidInputError("the query is empty: pass a question")
        return self._question_template.format(query_str=query_str)

    def _answer(self, question: str, contexts: list[Memory | str]) -> str:
        with self._cache.lock:
            return self.compressor.answer(question, contexts, **self._generation).text or self._empty_response

    def _stream(self, question: str, contexts: list[Memory | str]) -> TokenStream:
        compressor, kwargs = self.compressor, self._generation
        return TokenStream(lambda: compressor.stream(question, contexts, **kwargs), self._cache.lock)

    def _no_context(self, asynchronous: bool = False) -> RESPONSE_TEXT_TYPE:
        logger.warning("no node has text to read: returning the empty response instead of a closed-book answer")
        if not self._streaming:
            return self._empty_response
        return self._empty_response_agenerator() if asynchronous else self._empty_response_generator()


def _check_mark(node_id: str, mark: str, text: str, identity: tuple[str, str, str]) -> None:
    key = MemoryKey.parse(mark)
    if key.identity != identity:
        raise BackboneMismatchError(
            f"node {node_id} was compressed by {'/'.join(key.identity)}, but this synthesizer's compressor is "
            f"{'/'.join(identity)}: pass the same compressor to IcaeRagPostprocessor and "
            "IcaeRagSynthesizer (build_query_engine does)")
    if key.text_sha256 != text_sha256(text):
        logger.warning("node %s: its text changed after it was compressed; compressing it again", node_id)


def _check_template(template: BasePromptTemplate | str) -> BasePromptTemplate:
    if isinstance(template, str):
        template = PromptTemplate(template)
    if not isinstance(template, BasePromptTemplate):
        raise InvalidInputError(f"question_template must be a prompt template or str, got {type(template).__name__}")
    if set(template.template_vars) != {"query_str"}:
        raise InvalidInputError(
            f"question_template must use exactly the variable {{query_str}}, got {sorted(template.template_vars)}: "
            "the context is given to the decoder as memories, not as {context_str}")
    return template


def _check_query(query: Any) -> None:
    if not isinstance(query, (str, QueryBundle)):
        raise InvalidInputError(f"IcaeRagSynthesizer needs a query (str or QueryBundle), got {type(query).__name__}")


def _pop_nodes(response_kwargs: dict[str, Any]) -> list[NodeWithScore] | None:
    nodes = response_kwargs.pop(_NODES, None)
    if response_kwargs:
        raise InvalidInputError(f"unknown response options {sorted(response_kwargs)}: IcaeRagSynthesizer takes "
                                "generation options (max_new_tokens, ...) in its constructor")
    return nodes
