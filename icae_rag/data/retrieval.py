"""Long documents -> the passages a question needs: streamed chunking, BM25 candidates, MiniLM + FAISS ranking.

Memory stays bounded by the documents' own size: text is tokenized in pieces of `PIECE_CHARS`
(never one tensor of a whole file's tokens), passages are kept as character spans, and vectors are
added to the FAISS index batch by batch. Documents with more than `RERANK_CANDIDATES` passages are
first narrowed by BM25 over lowercase words (counting only the question's words, passage by
passage), and MiniLM ranks only those candidates: at the rate below, embedding the 5,522 passages of
a 5 MB text would take about 17 minutes on one CPU thread, a 50 MB one ten times that.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..errors import ContextTooLongError, InvalidInputError
from .chunking import sentence_chunks

# Characters tokenized at a time: about 16k tokens, a few MB of offsets.
PIECE_CHARS = 64 * 1024
# Context tokens `ask` retrieves by default: well inside SmolLM2's 8,192 positions, and what a 135M
# decoder can still read (the issue measured 0/9 answers from whole long documents, about a third
# from three 256-token passages).
DEFAULT_BUDGET = 1536
PASSAGE_TOKENS = 256
# Positions kept free for the chat template and the question; longer questions are refused.
PROMPT_RESERVE = 256
QUESTION_TEMPLATE_TOKENS = 64
EMBED_BATCH = 64
# Passages MiniLM re-ranks after BM25 on long documents: 50 times the default budget's six 256-token
# passages, so BM25 only has to get the right ones near the top, at a fixed MiniLM cost per question
# (300 passages of the tar man page took 54 s on one thread of a busy 2-core machine).
RERANK_CANDIDATES = 300
# Okapi BM25's usual constants (Lucene's defaults).
BM25_K1 = 1.2
BM25_B = 0.75
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Passage:
    """A span of one document: `doc` indexes the documents list, start/end are character offsets."""

    doc: int
    start: int
    end: int
    tokens: int
    score: float | None = None

    def text(self, texts: Sequence[str]) -> str:
        """The passage's text, cut from `texts`, the documents it indexes."""
        return texts[self.doc][self.start : self.end]


def text_pieces(text: str, piece_chars: int | None = None) -> list[tuple[int, int]]:
    """(start, end) character spans covering `text`, cut after a blank line, newline or space near
    `piece_chars` (default `PIECE_CHARS`)."""
    piece_chars = piece_chars or PIECE_CHARS
    spans, start, n = [], 0, len(text)
    while start < n:
        end = min(start + piece_chars, n)
        if end < n:
            # Cutting where a reader pauses keeps sentences whole; the second half of the piece is
            # searched so pieces stay at least half full.
            for sep in ("\n\n", "\n", " "):
                cut = text.rfind(sep, start + piece_chars // 2, end)
                if cut >= 0:
                    end = cut + len(sep)
                    break
        spans.append((start, end))
        start = end
    return spans


def count_tokens(tokenizer: Any, text: str, limit: int | None = None) -> int:
    """Tokens of `text` (no special tokens), counted piece by piece; stops once the count passes `limit`."""
    total = 0
    for start, end in text_pieces(text):
        total += len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        if limit is not None and total > limit:
            break
    return total


def chunk_passages(texts: Sequence[str], tokenizer: Any, passage_tokens: int = PASSAGE_TOKENS, *,
                   encoder: Any = None, progress: bool = False) -> list[Passage]:
    """Sentence-packed passages of at most `passage_tokens` tokens over every text, in document order;
    with `encoder`, passages are also cut to fit its `max_seq_length`."""
    passages: list[Passage] = []
    limit = getattr(getattr(encoder, "model", None), "max_seq_length", None)
    total = sum(len(t) for t in texts)
    with tqdm(total=total, unit="char", unit_scale=True, desc="chunking", disable=not progress,
              file=sys.stderr) as bar:
        for doc, text in enumerate(texts):
            for start, end in text_pieces(text):
                piece = text[start:end]
                enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                offsets = [tuple(o) for o in enc["offset_mapping"]]

                def fits(s: int, e: int, piece: str = piece, offsets: list = offsets) -> bool:
                    # The sentence encoder truncates silently past max_seq_length: a passage's
                    # tail would then never be searched.
                    span = piece[offsets[s][0] : offsets[e - 1][1]]
                    return len(encoder.tokenizer(span, add_special_tokens=True)["input_ids"]) <= limit

                for s, e in sentence_chunks(offsets, piece, passage_tokens, fits if limit else None):
                    # The chunker can leave a paragraph break as a chunk of its own: nothing to retrieve.
                    if piece[offsets[s][0] : offsets[e - 1][1]].strip():
                        passages.append(Passage(doc, start + offsets[s][0], start + offsets[e - 1][1], e - s))
                bar.update(end - start)
    return passages


def search(encoder: Any, passages: Sequence[str], query: str, top_k: int, *, progress: bool = False
           ) -> list[tuple[int, float]]:
    """(passage index, score) of the `top_k` passages nearest the query, best first (FAISS inner product
    over normalised encoder vectors)."""
    import faiss
    import numpy as np

    if not passages:
        raise InvalidInputError("there are no passages to search: pass a text with words in it")
    index = None
    for b in tqdm(range(0, len(passages), EMBED_BATCH), desc="embedding passages", unit="batch",
                  disable=not progress, file=sys.stderr):
        batch = list(passages[b : b + EMBED_BATCH])
        vectors = np.asarray(encoder.model.encode(batch, normalize_embeddings=True), dtype="float32")
        if index is None:
            index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
    query_vector = np.asarray(encoder.model.encode([query], normalize_embeddings=True), dtype="float32")
    scores, ids = index.search(query_vector, min(top_k, len(passages)))
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


def words(text: str) -> list[str]:
    """The lowercase words of `text` (runs of letters, digits and underscores), as BM25 counts them."""
    return _WORD.findall(text.lower())


def bm25_top(texts: Sequence[str], passages: Sequence[Passage], query: str, top_n: int, *,
             progress: bool = False) -> list[int]:
    """Indices of the `top_n` passages with the highest BM25 score for the query's words, best first,
    one per distinct passage text.

    Only the query's words are counted, one passage at a time, so memory is a few numbers per passage
    whatever the file's vocabulary. Ties keep document order; when no query word occurs anywhere the
    candidates are spread evenly over the passages.
    """
    import numpy as np

    terms = sorted(set(words(query)))
    n = len(passages)
    if n == 0 or top_n <= 0:
        return []
    tf = np.zeros((n, len(terms)), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.float32)
    for i, p in enumerate(tqdm(passages, desc="BM25 over passages", unit="passage", disable=not progress,
                               file=sys.stderr, mininterval=1.0)):
        counts = Counter(words(p.text(texts)))
        lengths[i] = sum(counts.values())
        tf[i] = [counts[t] for t in terms]
    df = (tf > 0).sum(axis=0)
    if not df.any():
        order = np.unique(np.linspace(0, n - 1, min(top_n, n)).round().astype(int))
    else:
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(float(lengths.mean()), 1.0))
        scores = (idf * tf * (BM25_K1 + 1) / (tf + norm[:, None])).sum(axis=1)
        # A stable sort on the negated scores keeps ties in document order, so runs are reproducible.
        order = np.argsort(-scores, kind="stable")
    # A text repeated in a file (boilerplate, a page pasted twice) scores the same every time: its copies
    # would fill the candidates and then the budget with one passage.
    top, seen = [], set()
    for i in order.tolist():
        p = passages[i]
        text = p.text(texts)
        if text not in seen:
            seen.add(text)
            top.append(i)
            if len(top) == top_n:
                break
    return top


def decoder_window(compressor: Any) -> int:
    """The decoder's maximum positions (`max_position_embeddings`)."""
    return int(compressor.decoder.model.config.max_position_embeddings)


def check_budget(budget: int, window: int, max_new_tokens: int) -> None:
    """Refuse a context budget that, with the prompt and the answer, does not fit the decoder's window."""
    if budget <= 0:
        raise InvalidInputError(f"the context budget must be positive, got {budget}")
    room = window - PROMPT_RESERVE - max_new_tokens
    if budget > room:
        raise ContextTooLongError(f"a budget of {budget} tokens does not fit the decoder's {window} positions "
                                  f"with the prompt ({PROMPT_RESERVE}) and the answer ({max_new_tokens}): "
                                  f"use a budget of at most {room}")


def select_context(texts: Sequence[str], question: str, tokenizer: Any, *, budget: int = DEFAULT_BUDGET,
                   window: int, max_new_tokens: int, whole: bool = False, names: Sequence[str] | None = None,
                   encoder_loader: Callable[[], Any] | None = None, passage_tokens: int = PASSAGE_TOKENS,
                   progress: bool = False
                   ) -> tuple[list[str], list[Passage]]:
    """The context texts a question is answered from, and the passages they are.

    Documents whose tokens fit `budget` together are read whole. Longer ones are chunked, MiniLM ranks
    the passages (only BM25's best `RERANK_CANDIDATES` when there are more), and the best are kept
    until `budget` tokens are used, read lowest-ranked first and best last. `whole=True` reads every
    document whole and raises ContextTooLongError when they do not fit the decoder's `window`.
    `encoder_loader()` gives the sentence encoder, called only when retrieval is needed.
    """
    names = list(names) if names is not None else [f"text {i}" for i in range(len(texts))]
    room = window - PROMPT_RESERVE - max_new_tokens
    question_tokens = count_tokens(tokenizer, question)
    if question_tokens > PROMPT_RESERVE - QUESTION_TEMPLATE_TOKENS:
        raise InvalidInputError(f"the question is {question_tokens} tokens: shorten it to at most "
                                f"{PROMPT_RESERVE - QUESTION_TEMPLATE_TOKENS}")
    if not whole:
        check_budget(budget, window, max_new_tokens)
    limit = room if whole else budget
    counts: list[int] = []
    for text in texts:
        counts.append(count_tokens(tokenizer, text, limit=limit - sum(counts)))
        if sum(counts) > limit:
            break
    if sum(counts) <= limit:
        return list(texts), [Passage(i, 0, len(t), n) for i, (t, n) in enumerate(zip(texts, counts, strict=True))]
    if whole:
        what = "the documents are" if len(texts) > 1 else f"{names[0]} is"
        raise ContextTooLongError(
            f"{what} more than {room} tokens (counted up to {sum(counts)}): with the prompt and a "
            f"{max_new_tokens}-token answer that does not fit the decoder's {window} positions; drop --whole to "
            "answer from the passages retrieved for the question, or pass a shorter document")
    if encoder_loader is None:
        from ..models.backbones import load_encoder as encoder_loader
    encoder = encoder_loader()
    # A budget below the passage size still gets whole passages, just smaller ones.
    passages = chunk_passages(texts, tokenizer, min(passage_tokens, budget), encoder=encoder, progress=progress)
    # Small documents skip BM25: MiniLM ranks every passage, as it always did.
    candidates = (bm25_top(texts, passages, question, RERANK_CANDIDATES, progress=progress)
                  if len(passages) > RERANK_CANDIDATES else list(range(len(passages))))
    ranked = search(encoder, [passages[c].text(texts) for c in candidates],
                    question, top_k=min(len(candidates), budget), progress=progress)
    ranked = [(candidates[i], score) for i, score in ranked]
    chosen, used = [], 0
    for i, score in ranked:
        p = passages[i]
        if used + p.tokens <= budget:
            chosen.append(Passage(p.doc, p.start, p.end, p.tokens, round(score, 4)))
            used += p.tokens
    # Read best last, next to the question: separately encoded memories lose most with distance from it
    # (docs/experiments.md, "Reading order"), and raw text reads better that way too.
    chosen.reverse()
    return [p.text(texts) for p in chosen], chosen
