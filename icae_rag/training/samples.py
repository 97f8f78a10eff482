"""Training samples for each objective, built from the readers in `icae_rag.data` with a fixed split.

Pretraining (plain text): documents are cut into windows of `sample_tokens` (+ `continuation_tokens`);
a window is an autoencoding sample (reproduce it) with probability `ae_lambda`, else a continuation
sample (write the next tokens). Fine-tuning (QA): context + question -> answer; unanswerable
questions teach the reply `unanswerable_answer`. Validation samples come from windows/paragraphs
that are never trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.readers import QAExample
from ..errors import DataError
from .config import TrainConfig


@dataclass(frozen=True)
class Sample:
    """One training example: compress `context`, then predict `target` in `mode`."""

    context: str
    mode: str  # "autoencode" | "continue" | "answer"
    target: str
    question: str | None = None
    id: str = ""


@dataclass
class SampleSplit:
    """Train and validation samples plus a JSON record of how they were made."""

    train: list[Sample]
    val: list[Sample]
    record: dict[str, Any]


def _unit(seed: int, key: str) -> float:
    """A deterministic number in [0, 1) from a seed and a key (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def build_samples(cfg: TrainConfig, tokenizer) -> SampleSplit:
    """Read every source, cut/convert to samples, split train/val; raise if anything is empty."""
    root = Path(cfg.data_root) if cfg.data_root else None
    train: list[Sample] = []
    val: list[Sample] = []
    per_source = []
    for src in cfg.data:
        if src.is_qa:
            items = [ex for ex in src.load(root)[: src.max_items]
                     if ex.answers or _unit(cfg.seed, "unanswerable:" + ex.id) < src.keep_unanswerable]
            samples = [_qa_sample(ex, cfg) for ex in items]
            unanswerable = sum(not ex.answers for ex in items)
            # Split by paragraph, so no validation question shares a context with training.
            held = [_unit(cfg.seed, "val:" + s.context) < cfg.eval_fraction for s in samples]
        else:
            docs = src.load(root)[: src.max_items]
            samples = _windows(src.name, docs, tokenizer, cfg)
            unanswerable = 0
            held = [_unit(cfg.seed, "val:" + s.id) < cfg.eval_fraction for s in samples]
        if not samples:
            raise DataError(f"data source {src.name!r} gave no samples: check the file or lower sample_tokens")
        src_train = [s for s, h in zip(samples, held, strict=True) if not h]
        src_val = [s for s, h in zip(samples, held, strict=True) if h]
        train += src_train
        val += src_val
        per_source.append({"name": src.name, "path": src.path, "train": len(src_train), "val": len(src_val),
                           "unanswerable": unanswerable})
    if not train:
        raise DataError("the training split is empty: add data or lower eval_fraction")
    record = {
        "sources": per_source,
        "train_samples": len(train),
        "val_samples": len(val),
        "split": f"per sample hash(seed={cfg.seed}, context or window id) < eval_fraction={cfg.eval_fraction}",
        "train_ids_sha256": hashlib.sha256("\n".join(s.id for s in train).encode()).hexdigest(),
    }
    return SampleSplit(train, val, record)


def _qa_sample(ex: QAExample, cfg: TrainConfig) -> Sample:
    answer = ex.answers[0] if ex.answers else cfg.unanswerable_answer
    return Sample(context=ex.context, mode="answer", target=answer, question=ex.question, id=ex.id)


def _windows(source: str, docs: list[str], tokenizer, cfg: TrainConfig) -> list[Sample]:
    """Non-overlapping token windows of each document; the tail shorter than a window is kept
    as an autoencoding sample when it has at least a quarter of `sample_tokens`."""
    size = cfg.sample_tokens + cfg.continuation_tokens
    out = []
    for d, doc in enumerate(docs):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), size):
            window = ids[start : start + size]
            wid = f"{source}:{d}:{start}"
            context = tokenizer.decode(window[: cfg.sample_tokens])
            rest = window[cfg.sample_tokens :]
            if not context.strip() or len(window) < cfg.sample_tokens // 4:
                continue  # whitespace-only or a few stray tokens: nothing to learn from
            if len(rest) >= cfg.continuation_tokens // 2 and _unit(cfg.seed, "mode:" + wid) >= cfg.ae_lambda:
                out.append(Sample(context, "continue", tokenizer.decode(rest), id=wid))
            else:
                out.append(Sample(context, "autoencode", context, id=wid))
    return out
