"""Memories: what a compressor makes of a text, in memory and on disk.

- `base`: `Memory`, what every kind shares (provenance, sizes, `Memory.load` of any kind's file).
- `soft_prompt`: `SoftPrompt` (rows in the decoder's input-embedding space: ICAE, E2LLM, raw) and
  `Piece`, which part of a source a memory stands for.
- `kv_memory`: `KvMemory`, kept per-(layer, KV head) keys and values (kvzip).
- `kv_file`: the file format of a `KvMemory` (safetensors, checksummed header).
- `kv_quant`: int8 / int4 / int2 storage of those keys and values.
"""

from .base import Memory
from .kv_memory import KvMemory
from .soft_prompt import Piece, SoftPrompt

__all__ = ["KvMemory", "Memory", "Piece", "SoftPrompt"]
