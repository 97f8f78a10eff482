"""`icae-rag ask` on long documents, on tiny models: streamed chunking, retrieval within a budget, --whole refused."""

from __future__ import annotations

import json
import random

import pytest

from icae_rag.cli import main
from icae_rag.data import retrieval
from icae_rag.data.retrieval import (
    bm25_top,
    chunk_passages,
    count_tokens,
    select_context,
    text_pieces,
)
from icae_rag.errors import ContextTooLongError

RAW = "raw:decoder=tiny-llama"
WORDS = "apollo moon river rhine barge grain coal oxygen plant light energy orbit lunar surface program".split()


def long_text(paragraphs: int, seed: int = 0) -> str:
    """Paragraphs of random words: about 12 tokens per 10 words."""
    rng = random.Random(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + "." for _ in range(paragraphs))


def run(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["ask", "--json", "--device", "cpu", "--encoder", "tiny-bert", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_text_pieces_cover_the_text_and_cut_where_a_reader_pauses():
    text = long_text(200)
    spans = text_pieces(text, 1000)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(500 <= e - s <= 1000 for s, e in spans[:-1])
    assert all(text[e - 2 : e] == "\n\n" for _, e in spans[:-1])
    assert text_pieces("x" * 2500, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]  # no break: hard cut


def test_chunking_tokenizes_in_bounded_pieces(tiny_raw, monkeypatch):
    monkeypatch.setattr(retrieval, "PIECE_CHARS", 2000)
    tokenizer, seen = tiny_raw.decoder.tokenizer, []

    def spy(text, **kwargs):
        seen.append(len(text))
        return tokenizer(text, **kwargs)

    texts = [long_text(60), "A short second document about the Rhine."]
    passages = chunk_passages(texts, spy, 48)
    assert max(seen) <= 2000 and len(seen) > 5
    assert {p.doc for p in passages} == {0, 1}
    assert all(0 < p.tokens <= 48 and p.text(texts).strip() for p in passages)
    assert passages == sorted(passages, key=lambda p: (p.doc, p.start))


def test_passages_fit_the_sentence_encoder(tiny_raw):
    from icae_rag.models.backbones import TINY_ENCODER, load_encoder

    encoder = load_encoder(TINY_ENCODER, device="cpu")
    encoder.model.max_seq_length = 40
    text = long_text(30)
    passages = chunk_passages([text], tiny_raw.decoder.tokenizer, 256, encoder=encoder)
    lengths = [len(encoder.tokenizer(text[p.start : p.end])["input_ids"]) for p in passages]
    assert max(lengths) <= 40 and max(p.tokens for p in passages) < 256


def test_count_tokens_stops_past_the_limit(tiny_raw):
    text = long_text(400)
    tokenizer = tiny_raw.decoder.tokenizer
    full = count_tokens(tokenizer, text)
    assert 100 < count_tokens(tokenizer, text, limit=100) < full


def test_whole_past_the_window_is_refused_before_compressing(tiny_raw):
    text = long_text(300)  # ~14k tokens > tiny-llama's 8,192 positions
    with pytest.raises(ContextTooLongError, match="drop --whole"):
        select_context([text], "Where?", tiny_raw.decoder.tokenizer, window=8192, max_new_tokens=8, whole=True,
                       encoder_loader=lambda: pytest.fail("no encoder is needed to refuse"))


def test_ask_retrieves_passages_within_the_budget(capsys, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text(long_text(200))
    code, result = run(capsys, "--compressor", RAW, "--budget", "300", "--max-new-tokens", "2",
                       "--context", str(doc), "Where does the barge carry grain?")
    assert code == 0 and result["retrieved"]
    assert 0 < sum(c["tokens"] for c in result["chunks"]) <= 300
    assert all(c["file"] == str(doc) and c["score"] is not None for c in result["chunks"])
    assert result["decoder_positions"] < 300 + 256 + 2


def test_a_small_budget_gets_small_passages(capsys, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text(long_text(40))
    code, result = run(capsys, "--compressor", RAW, "--budget", "20", "--max-new-tokens", "1",
                       "--context", str(doc), "Where?")
    assert code == 0 and result["retrieved"] and 0 < sum(c["tokens"] for c in result["chunks"]) <= 20


def test_ask_reads_a_short_file_whole_without_the_encoder(capsys, tmp_path, monkeypatch):
    import icae_rag.models.backbones

    monkeypatch.setattr(icae_rag.models.backbones, "load_encoder", lambda *a, **k: pytest.fail("encoder loaded"))
    doc = tmp_path / "short.txt"
    doc.write_text("The Rhine flows north to the North Sea.")
    code, result = run(capsys, "--compressor", RAW, "--max-new-tokens", "2", "--context", str(doc), "Where?")
    assert code == 0 and not result["retrieved"]
    assert result["chunks"] == [{"file": str(doc), "start": 0, "end": len(doc.read_text()),
                                 "tokens": result["input_tokens"], "score": None}]


def test_ask_whole_past_the_window_exits_2(capsys, tmp_path, monkeypatch):
    from icae_rag.compressors.base import Compressor

    monkeypatch.setattr(Compressor, "compress_many", lambda *a, **k: pytest.fail("compressed a refused document"))
    doc = tmp_path / "long.txt"
    doc.write_text(long_text(300))
    code, result = run(capsys, "--compressor", "kvzip:decoder=tiny-llama", "--whole", "--context", str(doc), "Where?")
    assert code == 2 and result["type"] == "ContextTooLongError" and "8192" in result["error"]


def test_ask_budget_past_the_window_exits_2(capsys, tmp_path):
    doc = tmp_path / "short.txt"
    doc.write_text("The Rhine flows north.")
    code, result = run(capsys, "--compressor", RAW, "--budget", "9000", "--context", str(doc), "Where?")
    assert code == 2 and result["type"] == "ContextTooLongError" and "at most" in result["error"]


def test_ask_kvzip_compresses_the_retrieved_passages(capsys, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text(long_text(120))
    code, result = run(capsys, "--compressor", "kvzip:decoder=tiny-llama,fidelity=0.3", "--budget", "256",
                       "--max-new-tokens", "2", "--context", str(doc), "What does the plant release?")
    assert code == 0 and result["retrieved"] and result["compressor"] == "kvzip"
    assert result["context_positions"] < sum(c["tokens"] for c in result["chunks"])
    # Each memory reports the ratio its check chose and the overlap it measured.
    assert all(c["ratio"] > 1 and 0.3 <= c["fidelity"] <= 1 for c in result["chunks"])


def test_the_bench_retrieve_uses_the_same_search(tiny_raw):
    from icae_rag.eval.qa import QAItem, retrieve
    from icae_rag.models.backbones import TINY_ENCODER, load_encoder

    doc = long_text(20)
    item = QAItem("q", "Where does the barge go?", ("x",), [doc])
    retrieve([item], load_encoder(TINY_ENCODER, device="cpu"), tiny_raw.decoder.tokenizer, 64, 3)
    assert len(item.passages) == 3 and all(p in doc for p in item.passages)


NEEDLE = "To extract one member, tar reads the archive and writes only the named file."


def needle_text(paragraphs: int, at: int) -> str:
    """Random-word paragraphs with NEEDLE as paragraph `at`: its words occur nowhere else."""
    parts = long_text(paragraphs).split("\n\n")
    parts.insert(at, NEEDLE)
    return "\n\n".join(parts)


def test_bm25_keeps_the_passage_with_the_question_s_rare_words(tiny_raw):
    text = needle_text(300, 211)
    passages = chunk_passages([text], tiny_raw.decoder.tokenizer, 48)
    top = bm25_top([text], passages, "How does tar extract a single file from the archive?", 3)
    assert len(passages) > 100 and len(top) == 3
    assert NEEDLE in text[passages[top[0]].start : passages[top[0]].end]


def test_bm25_spreads_the_candidates_when_no_question_word_occurs(tiny_raw):
    text = long_text(100)
    passages = chunk_passages([text], tiny_raw.decoder.tokenizer, 48)
    top = bm25_top([text], passages, "zyzzyva?", 5)
    assert top == sorted(top) and top[0] == 0 and top[-1] == len(passages) - 1 and len(top) == 5


def test_a_long_document_is_reranked_only_on_the_bm25_candidates(tiny_raw, monkeypatch):
    from icae_rag.models.backbones import TINY_ENCODER, load_encoder

    monkeypatch.setattr(retrieval, "RERANK_CANDIDATES", 3)
    embedded: list[int] = []
    search = retrieval.search

    def spy(encoder, passages, query, top_k, **kwargs):
        embedded.append(len(passages))
        return search(encoder, passages, query, top_k, **kwargs)

    monkeypatch.setattr(retrieval, "search", spy)
    text = needle_text(300, 211)
    chosen, passages = select_context([text], "How does tar extract a single file from the archive?",
                                      tiny_raw.decoder.tokenizer, budget=150, window=8192, max_new_tokens=8,
                                      passage_tokens=48, encoder_loader=lambda: load_encoder(TINY_ENCODER, device="cpu"))
    assert embedded == [3]
    assert any(NEEDLE in c for c in chosen) and all(p.score is not None for p in passages)


def test_a_small_document_ranks_every_passage_as_before(tiny_raw, monkeypatch):
    from icae_rag.models.backbones import TINY_ENCODER, load_encoder

    monkeypatch.setattr(retrieval, "bm25_top", lambda *a, **k: pytest.fail("BM25 ran on a small document"))
    encoder, tokenizer = load_encoder(TINY_ENCODER, device="cpu"), tiny_raw.decoder.tokenizer
    text, question = long_text(40), "Where does the barge carry grain?"
    chosen, passages = select_context([text], question, tokenizer, budget=100, window=8192, max_new_tokens=8,
                                      passage_tokens=48, encoder_loader=lambda: encoder)
    # The ranking before BM25 existed: MiniLM over every passage, best first until the budget is used.
    every = chunk_passages([text], tokenizer, 48, encoder=encoder)
    assert len(every) <= retrieval.RERANK_CANDIDATES
    expected, used = [], 0
    for i, _ in retrieval.search(encoder, [text[p.start : p.end] for p in every], question, len(every)):
        if used + every[i].tokens <= 100:
            expected.append((every[i].start, every[i].end))
            used += every[i].tokens
    assert len(expected) > 1
    # Read best last, next to the question.
    assert [(p.start, p.end) for p in passages] == expected[::-1]
    assert chosen == [text[s:e] for s, e in expected[::-1]]


def test_bm25_keeps_one_copy_of_a_repeated_passage(tiny_raw):
    text = "\n\n".join([long_text(30, seed=1), NEEDLE, long_text(30, seed=2), NEEDLE, long_text(30, seed=3)])
    passages = chunk_passages([text], tiny_raw.decoder.tokenizer, 16)
    top = bm25_top([text], passages, "How does tar extract a single file from the archive?", 4)
    picked = [text[passages[i].start : passages[i].end] for i in top]
    assert len(top) == 4 and len(set(picked)) == 4 and sum(NEEDLE in t for t in picked) == 1
