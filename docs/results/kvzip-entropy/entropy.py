"""Would a lossless entropy stage (zstd) be worth it on kvzip memory files? Bytes and read cost.

Compresses 20 held-out SQuAD paragraphs at fixed 4x in each storage, then zstd-compresses each
memory's file bytes (levels 3 and 19) and times decompression. zstandard is not a dependency of
the project; this measurement installs it apart:

    pip install --target /tmp/zs zstandard
    PYTHONPATH=/tmp/zs:. OMP_NUM_THREADS=1 ICAE_RAG_DATA=../shared/data \
        python docs/results/kvzip-entropy/entropy.py > docs/results/kvzip-entropy/results.txt
"""

import statistics
import tempfile
import time
from pathlib import Path

import zstandard

from icae_rag import Memory, load_compressor
from icae_rag.data import load_squad

paragraphs = list(dict.fromkeys(e.context for e in load_squad("heldout")))[:20]
print("| storage | bytes / source token | zstd-3 | zstd-19 | zstd-19 saving | decompress ms / memory (zstd-19) | load ms / memory |")
print("|---|---:|---:|---:|---:|---:|---:|")
for storage in ("float16", "int8", "int4", "int2"):
    comp = load_compressor(f"kvzip:ratio=4,storage={storage}", device="cpu")
    tokens = raw = z3 = z19 = 0
    unzip, load = [], []
    for text in paragraphs:
        memory = comp.compress(text)
        with tempfile.TemporaryDirectory() as tmp:
            memory.save(Path(tmp) / "m.safetensors")
            data = (Path(tmp) / "m.safetensors").read_bytes()
        tokens += memory.source_tokens
        raw += len(data)
        z3 += len(zstandard.ZstdCompressor(level=3).compress(data))
        packed = zstandard.ZstdCompressor(level=19).compress(data)
        z19 += len(packed)
        start = time.perf_counter()
        zstandard.ZstdDecompressor().decompress(packed)
        unzip.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        Memory.from_bytes(data, "memory")
        load.append(1000 * (time.perf_counter() - start))
    print(f"| {storage} | {raw / tokens:,.0f} | {z3 / tokens:,.0f} | {z19 / tokens:,.0f} | {1 - z19 / raw:.1%} | "
          f"{statistics.median(unzip):.2f} | {statistics.median(load):.2f} |")
