"""Answer from memories: the prompt layout (`prompts`), the cache each prompt builds (`prefill`), the
entries a question's answer reads under a read budget (`selection`), and decoding, streaming and
reconstruction (`generate`), with any `MemoryReader` (`reader`: the members of a compressor they use)."""

from .generate import (
    Answer,
    GenerationConfig,
    answer,
    answer_many,
    generate_from_prompts,
    reconstruct,
    reconstruct_token_ids,
    stream,
    stream_many,
    target_logits,
)
from .prefill import Prefilled
from .prompts import (
    INSTRUCTIONS,
    MODES,
    REPEAT_REQUEST,
    Context,
    Prompt,
    TrainingContext,
    build_prompt,
    context_prefix_ids,
    prompt_texts,
    stop_token_ids,
)
from .reader import MemoryReader

__all__ = [
    "INSTRUCTIONS",
    "MODES",
    "REPEAT_REQUEST",
    "Answer",
    "Context",
    "GenerationConfig",
    "MemoryReader",
    "Prefilled",
    "Prompt",
    "TrainingContext",
    "answer",
    "answer_many",
    "build_prompt",
    "context_prefix_ids",
    "generate_from_prompts",
    "prompt_texts",
    "reconstruct",
    "reconstruct_token_ids",
    "stop_token_ids",
    "stream",
    "stream_many",
    "target_logits",
]
