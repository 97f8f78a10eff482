"""The LlamaIndex RAG benchmark end to end on tiny backbones: same nodes per mode, nothing compressed at query time."""

from __future__ import annotations

import json

import pytest
from llama_index.core import Document

import benchmarks.llamaindex_rag as bench
from benchmarks.llamaindex_rag import (
    RagBenchOptions,
    load_corpus,
    rag_markdown,
    run_rag_bench,
)
from conftest import TEXT
from icae_rag import new_compressor
from icae_rag.errors import InvalidInputError
from icae_rag.eval.qa import QAItem
from icae_rag.models.backbones import TINY_DECODER


def test_rag_bench_compares_modes_on_the_same_nodes(tiny_icae, tiny_e2llm, tiny_raw):
    docs = [Document(text=TEXT * 3, id_="a"), Document(text=TEXT.replace("Apollo", "Gemini") * 2, id_="b")]
    items = [QAItem("q1", "When did Apollo 11 land?", ("1969",)), QAItem("q2", "Who stayed in orbit?", ("Collins",)),
             QAItem("q3", "Is it unanswerable?", ())]
    opts = RagBenchOptions(top_k=2, node_tokens=64, max_new_tokens=4)
    joint = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=2, read_ratio=4)
    result = run_rag_bench(docs, items, [tiny_icae, tiny_e2llm, joint], tiny_raw, opts)
    modes = result["modes"]
    assert set(modes) == {"raw", "icae", "e2llm", "kvzip:ratio=2,read_ratio=4"}
    for name, r in modes.items():
        assert r["same_nodes_as_raw"] == 1.0
        assert r["n_answerable"] == 2 and r["n_unanswerable"] == 1
        assert r["mean_seconds"] > 0 and r["mean_context_positions"] > 0
        assert 0 < r["mean_ttft_seconds"] <= r["mean_seconds"]
        assert 0 <= r["mean_answer_tokens"] <= opts.max_new_tokens + 1
        if name != "raw":
            assert r["compressed_at_query"] == 0  # precomputed at index time
            assert r["index_time_compression"]["nodes"] == result["nodes"]
    assert modes["icae"]["position_reduction_vs_raw"] > 2
    # Every question's answer in every mode, so runs can be compared question by question.
    assert [q["id"] for q in result["questions"]] == ["q1", "q2", "q3"]
    assert all(set(q["predictions"]) == set(modes) for q in result["questions"])
    assert "contained_vs_raw" not in modes["raw"]
    assert ("contained_vs_raw" in modes["icae"]) == (modes["raw"]["contained"]["mean"] > 0)
    # Stored at 2x, read at 4x with one budget: the positions read are about a quarter of the raw ones.
    assert 3.5 < modes["kvzip:ratio=2,read_ratio=4"]["position_reduction_vs_raw"] < 4.5
    # Every mode against raw, question by question; the gold scored for the two answerable questions.
    assert set(result["comparisons"]) == {"raw"} and set(result["comparisons"]["raw"]) == set(modes) - {"raw"}
    for name, r in modes.items():
        assert r["gold_loglik"]["low"] <= r["gold_loglik"]["mean"] <= r["gold_loglik"]["high"] < 0
        assert "loglik_diff" in result["comparisons"]["raw"].get(name, {"loglik_diff": 0})
    q1 = result["questions"][0]
    assert set(q1["gold_logliks"]) == set(modes) and len(q1["gold_target"]) == 2  # (lead-in, gold)
    assert result["questions"][2]["gold_logliks"] == {}  # unanswerable: no gold to score
    record = {"dataset": "toy", "split": "toy", "documents": ["a", "b"], "n": 3, "seed": 0}
    assert "| icae |" in rag_markdown(record, result, opts)


def test_rag_bench_rejects_bad_options_before_loading_anything():
    with pytest.raises(InvalidInputError, match="unknown dataset"):
        load_corpus(RagBenchOptions(dataset="trivia"))
    with pytest.raises(InvalidInputError, match="positive"):
        load_corpus(RagBenchOptions(limit=0))


def test_a_stopped_rag_bench_resumes_with_the_questions_left(tiny_raw, tmp_path, monkeypatch):
    docs = [Document(text=TEXT * 3, id_="a")]
    items = [QAItem(f"q{i}", f"What happened {i}?", ("1969",)) for i in range(3)]
    opts = RagBenchOptions(top_k=2, node_tokens=64, max_new_tokens=3)
    progress = tmp_path / "progress.jsonl"
    whole = run_rag_bench(docs, items, [], tiny_raw, opts, progress_file=progress)
    lines = progress.read_text().splitlines()
    assert len(lines) == 4  # the key, then one line per answered question
    # Stopped while writing the third question: its line is torn.
    progress.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    asked = []
    real = bench._query

    def spy(engine, reader, question):
        asked.append(question)
        return real(engine, reader, question)

    monkeypatch.setattr(bench, "_query", spy)
    resumed = run_rag_bench(docs, items, [], tiny_raw, opts, progress_file=progress)
    assert asked == ["What happened 2?"] * 2  # the warm-up, then the one question left
    assert [q["id"] for q in resumed["questions"]] == ["q0", "q1", "q2"]
    assert [json.loads(line)["id"] for line in progress.read_text().splitlines()[1:]] == ["q0", "q1", "q2"]
    assert [q["predictions"] for q in resumed["questions"][:2]] == [q["predictions"] for q in whole["questions"][:2]]
    with pytest.raises(InvalidInputError, match="other options"):
        run_rag_bench(docs, items[:2], [], tiny_raw, opts, progress_file=progress)
