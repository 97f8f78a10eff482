"""icae_rag: answer from compressed context memories.

The default kind, kvzip, needs no training: a passage's memory is the decoder's own keys and values,
each scored by the attention it gets, and a question reads 1/2.5 of the memories it retrieves
(the entries it attends to and the best-scored). ICAE and E2LLM (trained input-level soft
prompts) and raw text share the same interface.

The common case::

    from icae_rag import load_compressor
    compressor = load_compressor()              # kvzip (read budget 2.5x) on SmolLM2-135M-Instruct
    memory = compressor.compress(long_text)     # a KvMemory (a SoftPrompt for icae, e2llm, raw)
    print(compressor.answer("Who ...?", [memory]).text)
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

# The version lives in pyproject.toml only; an installed distribution reports it. A bare checkout
# on sys.path (never installed) has no metadata to read.
try:
    __version__ = importlib.metadata.version("icae-rag")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0+unknown"
# What `load_compressor()`, the CLI and the integrations use when no kind is named: the kind that
# answers held-out SQuAD best without training (README, Results).
DEFAULT_KIND = "kvzip"

# Public names -> defining module; imported on first use so `import icae_rag.data` stays light.
_EXPORTS = {
    "Answer": "decoding.generate",
    "Compressor": "compressors",
    "E2llmCompressor": "compressors",
    "E2llmConfig": "compressors",
    "GenerationConfig": "decoding.generate",
    "IcaeCompressor": "compressors",
    "IcaeConfig": "compressors",
    "KvMemory": "memories.kv_memory",
    "KvzipCompressor": "compressors",
    "KvzipConfig": "compressors",
    "LanceMemoryStore": "stores",
    "Memory": "memories.base",
    "MemoryStore": "stores",
    "Piece": "memories.soft_prompt",
    "RawTextCompressor": "compressors",
    "SqliteMemoryStore": "stores",
    "SoftPrompt": "memories.soft_prompt",
    "load_compressor": "compressors",
    "load_decoder": "models.backbones",
    "load_encoder": "models.backbones",
    "new_compressor": "compressors",
    "open_store": "stores",
    "read_document": "text",
    "select_context": "data.retrieval",
}
__all__ = sorted([*_EXPORTS, "DEFAULT_KIND", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'icae_rag' has no attribute {name!r}")
