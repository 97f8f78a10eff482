"""`SoftPromptSynthesizer`: answers by conditioning the decoder on the nodes' soft prompts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import MockLLM
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore
from llama_index.core.types import RESPONSE_TEXT_TYPE

from icae_rag.errors import BackboneMismatchError, InvalidInputError

from ._shared import (
    RAW,
    SLOT_KEY,
    SlotCache,
    TokenStream,
    UsesCompressor,
    load_compressor_arg,
    node_text,
    open_store_arg,
)

if TYPE_CHECKING:
    from icae_rag.memory import Memory

logger = logging.getLogger(__name__)

DEFAULT_QUESTION_TEMPLATE = PromptTemplate("{query_str}")
_NODES = "icae_rag_nodes"  # response kwarg through which synthesize() hands its nodes to get_response()


class SoftPromptSynthesizer(UsesCompressor, BaseSynthesizer):
    """Answers with the compressor's decoder reading the nodes' soft prompts instead of their text.

    A node marked by `SoftPromptCompressor` is read as its soft prompt (looked up by its slot key in
    memory, then in the slot store) or, if marked raw, as its text; an unmarked node is compressed
    on the fly (and stored, with a slot store). Contexts keep the order of the nodes.

    The question passed to the decoder is `question_template` (a prompt with ``{query_str}`` only,
    key ``"question_template"`` in `get_prompts()`) formatted with the query; the instruction and
    the context layout are those of `icae_rag.generation.build_prompt`.

    Streaming (``streaming=True``): `query` returns a `StreamingResponse`, `aquery` an
    `AsyncStreamingResponse`; tokens arrive as they are decoded.

    Errors and fallbacks: an empty query raises InvalidInputError; a node whose slot key was made by
    another compressor version or decoder raises BackboneMismatchError; a node whose text changed
    after it was compressed is compressed again (warning); when no node has text the answer is the
    empty response (warning), never a closed-book answer.

    No LlamaIndex LLM is used: a `MockLLM` satisfies the base class, so `Settings.llm` (OpenAI by
    default) is never resolved by this synthesizer.

    Example::

        synth = SoftPromptSynthesizer(compressor, store, streaming=True, max_new_tokens=64)
        engine = index.as_query_engine(llm=MockLLM(), node_postprocessors=[post], response_synthesizer=synth)
    """

    def __init__(self, compressor: Any = None, slot_store: Any = None, *, streaming: bool = False,
                 question_template: BasePromptTemplate | str | None = None, device: str = "auto",
                 batch_size: int = 8, callback_manager: CallbackManager | None = None,
                 **generation: Any) -> None:
        """`compressor`/`slot_store` as for SoftPromptCompressor; `generation`: max_new_tokens, do_sample, ..."""
        from icae_rag.generation import GenerationConfig

        try:
            self._generation = GenerationConfig(**generation)
        except TypeError as e:
            valid = [f.name for f in dataclasses.fields(GenerationConfig)]
            raise InvalidInputError(f"{e}: valid generation options are {valid}") from e
        super().__init__(llm=MockLLM(), callback_manager=callback_manager, streaming=streaming)
        self._question_template = _check_template(question_template or DEFAULT_QUESTION_TEMPLATE)
        self._batch_size = batch_size
        self._cache = SlotCache(load_compressor_arg(compressor, device)[0], open_store_arg(slot_store))

    # --- prompts --------------------------------------------------------------------------------
    def _get_prompts(self) -> PromptDictType:
        return {"question_template": self._question_template}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if "question_template" in prompts:
            self._question_template = _check_template(prompts["question_template"])

    # --- synthesis ------------------------------------------------------------------------------
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
        """The answer (str, or a token generator when streaming) from the nodes' soft prompts."""
        nodes = _pop_nodes(response_kwargs)
        question = self._question(query_str)
        contexts = self.contexts(nodes) if nodes is not None else self._chunk_contexts(text_chunks)
        if not contexts:
            return self._no_context()
        if self._streaming:
            return self._or_empty(self._stream(question, contexts).tokens())
        with self._cache.lock:
            answer = self.compressor.answer(question, contexts, **self._generation_kwargs())
        return answer.text or self._empty_response

    async def aget_response(self, query_str: str, text_chunks: Sequence[str],
                            **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """As get_response, with compression and decoding off the event loop."""
        nodes = _pop_nodes(response_kwargs)
        question = self._question(query_str)
        if nodes is not None:
            contexts = await asyncio.to_thread(self.contexts, nodes)
        else:
            contexts = await asyncio.to_thread(self._chunk_contexts, text_chunks)
        if not contexts:
            return self._no_context(asynchronous=True)
        if self._streaming:
            return self._aor_empty(self._stream(question, contexts).atokens())

        def answer() -> str:
            with self._cache.lock:
                return self.compressor.answer(question, contexts, **self._generation_kwargs()).text

        return await asyncio.to_thread(answer) or self._empty_response

    def contexts(self, nodes: Sequence[NodeWithScore]) -> list[Memory | str]:
        """What the decoder reads for these nodes, in order: SoftPrompts, and str for nodes kept raw."""
        identity = self._cache.identity()
        slots: list[Memory | str | None] = []
        to_compress: list[tuple[int, str]] = []
        for nws in nodes:
            text = node_text(nws.node)
            if text is None:
                continue
            mark = nws.node.metadata.get(SLOT_KEY)
            if mark == RAW:
                slots.append(text)
                continue
            if mark is not None:
                self._check_mark(nws.node.node_id, mark, text, identity)
            to_compress.append((len(slots), text))
            slots.append(None)
        if to_compress:
            resolved = self._cache.resolve([t for _, t in to_compress], batch_size=self._batch_size)
            for (pos, _), prompt in zip(to_compress, resolved.prompts, strict=True):
                slots[pos] = prompt
        return slots

    def _check_mark(self, node_id: str, mark: str, text: str, identity: tuple[str, str, str]) -> None:
        from icae_rag.slot_store import SlotKey
        from icae_rag.soft_prompt import text_sha256

        key = SlotKey.parse(mark)
        if key.identity != identity:
            raise BackboneMismatchError(
                f"node {node_id} was compressed by {'/'.join(key.identity)}, but this synthesizer's compressor is "
                f"{'/'.join(identity)}: pass the same compressor to SoftPromptCompressor and "
                "SoftPromptSynthesizer (build_query_engine does)")
        if key.text_sha256 != text_sha256(text):
            logger.warning("node %s: its text changed after it was compressed; compressing it again", node_id)

    def _chunk_contexts(self, text_chunks: Sequence[str]) -> list[Memory | str]:
        texts = [t for t in text_chunks if isinstance(t, str) and t.strip()]
        if len(texts) < len(text_chunks):
            logger.warning("%d empty text chunks are left out of the context", len(text_chunks) - len(texts))
        return list(self._cache.resolve(texts, batch_size=self._batch_size).prompts) if texts else []

    def _question(self, query_str: str) -> str:
        if not isinstance(query_str, str) or not query_str.strip():
            raise InvalidInputError("the query is empty: pass a question")
        return self._question_template.format(query_str=query_str)

    def _generation_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self._generation)

    def _stream(self, question: str, contexts: list[Memory | str]) -> TokenStream:
        compressor, kwargs = self.compressor, self._generation_kwargs()
        return TokenStream(lambda: compressor.stream(question, contexts, **kwargs), self._cache.lock)

    def _or_empty(self, pieces: Generator[str, None, None]) -> Generator[str, None, None]:
        """The pieces, or the empty response if the decoder ends at once (as the non-streaming answer)."""
        empty = True
        try:
            for piece in pieces:
                empty = False
                yield piece
        finally:
            pieces.close()
        if empty:
            yield self._empty_response

    async def _aor_empty(self, pieces: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
        empty = True
        try:
            async for piece in pieces:
                empty = False
                yield piece
        finally:
            await pieces.aclose()
        if empty:
            yield self._empty_response

    def _no_context(self, asynchronous: bool = False) -> RESPONSE_TEXT_TYPE:
        logger.warning("no node has text to read: returning the empty response instead of a closed-book answer")
        if not self._streaming:
            return self._empty_response
        return self._empty_response_agenerator() if asynchronous else self._empty_response_generator()


def _check_template(template: BasePromptTemplate | str) -> BasePromptTemplate:
    if isinstance(template, str):
        template = PromptTemplate(template)
    if not isinstance(template, BasePromptTemplate):
        raise InvalidInputError(f"question_template must be a prompt template or str, got {type(template).__name__}")
    if set(template.template_vars) != {"query_str"}:
        raise InvalidInputError(
            f"question_template must use exactly the variable {{query_str}}, got {sorted(template.template_vars)}: "
            "the context is given to the decoder as soft prompts, not as {context_str}")
    return template


def _check_query(query: Any) -> None:
    from llama_index.core.schema import QueryBundle

    if not isinstance(query, (str, QueryBundle)):
        raise InvalidInputError(f"SoftPromptSynthesizer needs a query (str or QueryBundle), got {type(query).__name__}")


def _pop_nodes(response_kwargs: dict[str, Any]) -> list[NodeWithScore] | None:
    nodes = response_kwargs.pop(_NODES, None)
    if response_kwargs:
        raise InvalidInputError(f"unknown response options {sorted(response_kwargs)}: SoftPromptSynthesizer takes "
                                "generation options (max_new_tokens, ...) in its constructor")
    return nodes
