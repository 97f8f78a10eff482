"""LongLLMLingua (Jiang et al. 2023, arXiv 2310.06839) as the text-compression baseline.

The same local decoder that reads the contexts scores the tokens, and every count is in its own
tokenizer. llmlingua 0.2.2 is fixed in a thin subclass (site-packages is untouched):
- it slices past_key_values as tuples, but transformers 5 returns `DynamicCache` objects;
- it hands the cache to the decoder as `past_key_values=`, a keyword transformers 5.24 renamed to
  `cache` (the old one goes in 5.40): the decoder is called through `hf_compat`'s name instead;
- for a prompt shorter than `iterative_size` (upstream issue #196) its window end goes negative and
  every token is kept; for longer ones the final partial window is never compressed (we use one
  window over the whole input);
- each segment's threshold is a quantile over every score seen so far, not over that segment's
  own scores (paper, Eq. 5), and the dynamic per-passage ratios are clipped and length-weighted,
  so later segments are over-pruned and the budget is missed; we solve for the base ratio.
"""

from __future__ import annotations

import functools
import numbers
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from ..errors import InvalidInputError
from ..models.hf_compat import cache_arg, output_cache

# LongLLMLingua's question-aware settings, as in the paper and LlamaIndex's postprocessor.
_DEFAULTS = dict(
    rank_method="longllmlingua",
    condition_in_question="after_condition",
    condition_compare=True,
    reorder_context="sort",
    dynamic_context_compression_ratio=0.3,
    context_budget="+100",
    concate_question=False,  # the reader adds the question itself
)


class _DecoderTokenCounter:
    """Stands in for llmlingua's tiktoken encoder so every count is in decoder tokens."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, **_) -> list[int]:
        """Decoder token ids of `text`, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int], **_) -> str:
        """Text of decoder token ids."""
        return self.tokenizer.decode(ids)


@functools.cache
def _compressor_class() -> type:
    """llmlingua's PromptCompressor with the fixes above (built lazily: llmlingua is optional)."""
    from llmlingua import PromptCompressor
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    class _IndexableCache(DynamicCache):
        """A DynamicCache that also answers llmlingua's legacy `cache[layer][0]` indexing."""

        def __getitem__(self, layer: int):
            return self.layers[layer].keys, self.layers[layer].values

    class _CacheKeyword:
        """The decoder as llmlingua calls it (`past_key_values=` in, `.past_key_values` out), called
        with the installed transformers' name for the cache."""

        def __init__(self, model) -> None:
            self.model = model

        def __call__(self, *args, past_key_values=None, **kwargs) -> SimpleNamespace:
            out = self.model(*args, **kwargs, **cache_arg(past_key_values))
            return SimpleNamespace(logits=out.logits, past_key_values=output_cache(out))

    class _Compressor(PromptCompressor):
        def get_ppl(self, *args, past_key_values=None, return_kv=False, **kwargs):
            """Per-token loss; the KV cache goes in and out as llmlingua's [(k, v), ...] list."""
            if past_key_values is not None and not isinstance(past_key_values, Cache):
                past_key_values = _IndexableCache(past_key_values)
            model, self.model = self.model, _CacheKeyword(self.model)
            try:
                out = super().get_ppl(*args, past_key_values=past_key_values, return_kv=return_kv, **kwargs)
            finally:
                self.model = model
            if not return_kv:
                return out
            loss, cache = out
            return loss, [(layer.keys, layer.values) for layer in cache.layers]

        def get_dynamic_compression_ratio(self, context, target_token, *args, **kwargs):
            """Per-segment keep ratios, with the base ratio solved so they keep `target_token` in all."""
            parent = super().get_dynamic_compression_ratio

            def plan(base: float) -> list:
                return parent(context, base, *args, **kwargs)

            def kept(base: float) -> float:
                return sum(n * ratio for window in plan(base) for n, ratio in window)

            # Upstream uses base = target_token, but the +-dynamic offsets around it are clipped
            # to [0, 1] and weighted by unequal passage lengths, missing the budget by up to ~20%.
            lo, hi = 0.0, 2.0 * sum(n for window in plan(0.0) for n, _ in window) + 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if kept(mid) < target_token else (lo, mid)
            return plan(hi)

        def get_estimate_threshold_base_distribution(self, ppl, ratio: float, condition_flag: bool = False):
            """Remember the segment's keep ratio; get_compressed_input sets the threshold from it."""
            self._segment_ratio = ratio
            return super().get_estimate_threshold_base_distribution(ppl, ratio, condition_flag)

        def get_compressed_input(self, loss, input_ids, attention_mask, end=200, iterative_size=200,
                                 threshold=0.5, *args, start: int = 0, self_loss=None, **kwargs):
            """Prune one segment [end - iterative_size, end) with a threshold from its own scores."""
            if end - iterative_size < start:  # window clipped at the prompt's end (issue #196)
                end = start + iterative_size
            scores = loss if self_loss is None else self_loss[: loss[start:].shape[0]] - loss[start:]
            lo = max(0, end - iterative_size - (0 if self_loss is None else start))
            segment = scores[lo : lo + iterative_size]
            if segment.numel():
                threshold = super().get_estimate_threshold_base_distribution(segment, self._segment_ratio)
            return super().get_compressed_input(loss, input_ids, attention_mask, end, iterative_size,
                                                threshold, *args, start=start, self_loss=self_loss, **kwargs)

    return _Compressor


class LongLLMLinguaBaseline:
    """Question-aware coarse-to-fine LongLLMLingua compression scored by a local causal LM.

    A text-level baseline for the benchmarks, not an icae_rag `Compressor` (it makes no memory).
    """

    def __init__(self, decoder_dir: str | Path, device: str = "cpu") -> None:
        """Load the decoder at `decoder_dir` (a Hugging Face directory) as the scorer, offline."""
        try:
            import tiktoken

            cls = _compressor_class()
        except ImportError as e:
            raise ImportError(
                f"the LongLLMLingua baseline needs the llmlingua package ({e}): pip install llmlingua"
            ) from e
        from ..models.runtime import resolve_device

        path = Path(decoder_dir).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidInputError(f"{path} is not a Hugging Face model directory (no config.json)")
        # PromptCompressor.__init__ fetches tiktoken's gpt-3.5 BPE file over the network; patched
        # only for the call (restored on exit), then replaced by the decoder's own tokenizer.
        with mock.patch.object(tiktoken, "encoding_for_model", lambda *_a, **_k: None):
            self._lingua = cls(str(path), device_map=str(resolve_device(device)),
                               model_config={"local_files_only": True, "trust_remote_code": False})
        self._lingua.model.eval().requires_grad_(False)
        self._tokens = _DecoderTokenCounter(self._lingua.tokenizer)
        self._lingua.oai_tokenizer = self._tokens

    def count_tokens(self, text: str) -> int:
        """Length of `text` in decoder tokens."""
        return len(self._tokens.encode(text))

    def compress(self, passages: list[str], question: str, target_tokens: int) -> tuple[str, int]:
        """Compress `passages` for `question` to about `target_tokens` decoder tokens: (text, length)."""
        if isinstance(passages, str) or not all(isinstance(p, str) for p in passages):
            raise InvalidInputError("passages must be a list of strings")
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("LongLLMLingua ranks and prunes by the question: give a non-empty question")
        if isinstance(target_tokens, bool) or not isinstance(target_tokens, numbers.Integral) or target_tokens < 1:
            raise InvalidInputError(f"target_tokens must be a positive int, got {target_tokens!r}")
        passages = [p for p in passages if p.strip()]
        joined = "\n\n".join(passages)
        if self.count_tokens(joined) <= target_tokens:
            return joined, self.count_tokens(joined)  # already within budget
        # One window over the whole (short) input, so llmlingua's loop cannot skip a partial last
        # window; capped so the question prefix plus two windows fits the decoder's positions
        # (past the cap, about 2k tokens for SmolLM2, llmlingua's last partial window stays uncompressed).
        window = min(self.count_tokens(question + "\n\n" + joined) + 2 * len(passages) + 8,
                     self._lingua.max_position_embeddings // 4)
        result = self._lingua.compress_prompt(
            passages, question=question, target_token=int(target_tokens), iterative_size=window,
            use_context_level_filter=len(passages) > 1,  # coarse ranking needs several passages
            **_DEFAULTS,
        )
        text = result["compressed_prompt"].strip()
        return text, self.count_tokens(text)
