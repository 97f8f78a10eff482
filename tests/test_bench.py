"""`icae-rag bench` end to end on tiny models and a handful of examples; bad input fails early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TEXT
from icae_rag.cli import main
from icae_rag.data import default_data_root
from icae_rag.errors import BackboneMismatchError, DataError, InvalidInputError, MissingFileError
from icae_rag.eval.bench import BenchOptions, run_bench, validate


@pytest.fixture
def checkpoints(tiny_icae, tiny_e2llm, tmp_path):
    return [str(tiny_icae.save_pretrained(tmp_path / "icae")), str(tiny_e2llm.save_pretrained(tmp_path / "e2llm"))]


@pytest.fixture
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    rows = [{"context": TEXT, "question": "When did Apollo 11 land?", "answer": "1969"},
            {"context": TEXT, "question": "Who stayed in orbit?", "answer": "Michael Collins"},
            {"context": TEXT, "question": "What colour was the rocket?", "answer": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fidelity_suite(checkpoints, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT * 6)
    res = run_bench(BenchOptions(suite="fidelity", out=str(tmp_path / "out"), compressors=checkpoints,
                                 data=str(text), limit=2, spans=[32], longllmlingua=False))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["compressor"] for r in saved["fidelity"]["rows"]} == {"icae", "e2llm"}
    assert all(0.0 <= r["bleu4"]["mean"] <= 1.0 and r["n"] == 2 for r in saved["fidelity"]["rows"])
    assert saved["environment"]["git_commit"] and saved["environment"]["seed"] == 0
    assert _png(tmp_path / "out" / "quality_vs_ratio.png")
    assert "Untrained" in (tmp_path / "out" / "results.md").read_text()
    assert res["plots"] == ["quality_vs_ratio.png"]


def test_qa_suite_on_user_jsonl(checkpoints, qa_file, tmp_path, capsys):
    run_bench(BenchOptions(suite="qa", out=str(tmp_path / "out"), compressors=checkpoints, data=str(qa_file),
                           max_new_tokens=4, longllmlingua=False))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    modes = saved["qa"]["custom"]["results"]
    assert set(modes) == {"raw", "none", "icae", "e2llm"}
    assert modes["raw"]["n_answerable"] == 2 and modes["raw"]["n_unanswerable"] == 1
    assert "abstention" in modes["raw"] and 0 <= modes["raw"]["contained"]["mean"] <= 1
    assert modes["icae"]["compression_ratio"] > 2 and modes["raw"]["compression_ratio"] == 1
    assert "not run" in saved["qa"]["custom"]["longllmlingua"]
    assert _png(tmp_path / "out" / "quality_vs_ratio.png")
    # Every question keeps its answer in every mode, so modes can be compared question by question.
    questions = saved["qa"]["custom"]["questions"]
    assert len(questions) == 3 and all(set(q["predictions"]) == set(modes) for q in questions)
    assert all("predictions" not in r for r in modes.values())
    from benchmarks.paired import main as paired

    paired([str(tmp_path / "out" / "results.json"), "icae", "raw", "--dataset", "custom"])
    out = capsys.readouterr().out
    assert "n = 2" in out and "icae / raw" in out and "only icae" in out


def _need_data(folder: str) -> None:
    """Skip unless the shared data folder (beside the checkout or $ICAE_RAG_DATA) holds `folder`."""
    try:
        found = (default_data_root() / folder).is_dir()
    except DataError:
        found = False
    if not found:
        pytest.skip(f"the shared data folder with {folder}/ is not beside this checkout")


def test_qa_suite_with_retrieval_and_longllmlingua(checkpoints, tmp_path):
    pytest.importorskip("llmlingua")
    _need_data("longqa-covid-qa")
    run_bench(BenchOptions(suite="qa", out=str(tmp_path / "out"), compressors=checkpoints[:1], datasets=["covid"],
                           limit=2, top_k=2, passage_tokens=64, max_new_tokens=4))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    block = saved["qa"]["covid"]
    assert "FAISS" in block["record"]["retrieval"]
    assert set(block["results"]) == {"raw", "none", "icae", "longllmlingua"}
    lingua, icae = block["results"]["longllmlingua"], block["results"]["icae"]
    assert lingua["mean_context_positions"] < block["results"]["raw"]["mean_context_positions"]
    assert lingua["mean_context_positions"] <= 2 * icae["mean_context_positions"] + 20


def test_efficiency_suite(checkpoints, tmp_path):
    _need_data("text-wikitext2")
    run_bench(BenchOptions(suite="efficiency", out=str(tmp_path / "out"), compressors=checkpoints,
                           lengths=[64, 128], longllmlingua=False))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = saved["efficiency"]["rows"]
    assert {(r["mode"], r["context_tokens"]) for r in rows} >= {("raw", 64), ("icae", 128), ("e2llm", 128)}
    icae = next(r for r in rows if r["mode"] == "icae" and r["context_tokens"] == 128)
    raw = next(r for r in rows if r["mode"] == "raw" and r["context_tokens"] == 128)
    assert icae["decoder_positions"] < raw["decoder_positions"] and icae["kv_cache_mb"] < raw["kv_cache_mb"]
    assert "speedup_ttft_vs_raw" in icae and icae["prefill_seconds"] > 0
    # Compression's memory is the process's resident peak (the decoder alone is tens of MB); raw compresses nothing.
    assert icae["compress_resident_mb"] > 10 and raw["compress_resident_mb"] is None
    assert _png(tmp_path / "out" / "latency_vs_length.png")


def test_bad_input_fails_before_models_load(checkpoints, tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="positive"):
        validate(BenchOptions(suite="qa", limit=0, compressors=checkpoints))
    with pytest.raises(MissingFileError):
        validate(BenchOptions(suite="qa", data=str(tmp_path / "nope.jsonl"), compressors=checkpoints))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x"}\n')
    with pytest.raises(InvalidInputError, match="question"):
        validate(BenchOptions(suite="qa", data=str(bad), compressors=checkpoints))
    with pytest.raises(InvalidInputError, match="unknown suite"):
        validate(BenchOptions(suite="speed", compressors=checkpoints))
    other = json.loads((Path(checkpoints[0]) / "compressor_config.json").read_text())
    other["backbones"]["decoder"]["name"] = "smollm2-135m-instruct"
    (Path(checkpoints[0]) / "compressor_config.json").write_text(json.dumps(other))
    with pytest.raises(BackboneMismatchError, match="different decoders"):
        validate(BenchOptions(suite="qa", compressors=checkpoints, data=str(bad)))
    assert main(["bench", "qa", "--limit", "0", "--json", "--checkpoint", checkpoints[1]]) == 2
    assert json.loads(capsys.readouterr().out)["type"] == "InvalidInputError"


def test_text_compression_ratio_is_measured_against_the_passages(tiny_raw):
    from icae_rag.eval.qa import QAItem, run_qa

    passage = " ".join(f"word{i}" for i in range(40))
    items = [QAItem("a", "Which word?", ("word3",), [passage])]
    half = tiny_raw.decoder.tokenizer.decode(tiny_raw.tokenize(passage)[:len(tiny_raw.tokenize(passage)) // 2])
    modes = {"raw": lambda it: list(it.passages), "pruned": lambda it: [half], "none": lambda it: []}
    readers = dict.fromkeys(modes, tiny_raw)
    res = run_qa(items, modes, readers, max_new_tokens=2, batch_size=1, seed=0)
    assert res["raw"]["compression_ratio"] == 1
    assert 1.8 < res["pruned"]["compression_ratio"] < 2.2, "a text compressor's ratio is not 1.0x"
    assert res["none"]["compression_ratio"] is None
    assert "contained_vs_raw" not in res["raw"]
    assert ("contained_vs_raw" in res["pruned"]) == (res["raw"]["contained"]["mean"] > 0)


def test_qa_scores_the_gold_in_every_mode_and_compares_with_raw(tiny_raw):
    from icae_rag.eval.qa import QAItem, qa_markdown, run_qa

    passage = "The exit status is 2 when a warning occurs. Option -9 compresses best."
    items = [QAItem("a", "What is the exit status?", ("2",), [passage]),
             QAItem("b", "Which option compresses best?", ("-9",), [passage]),
             QAItem("u", "Unanswerable?", (), [passage])]
    # raw given last: it is still answered first, since its answers place every mode's gold.
    modes = {"none": lambda it: [], "raw": lambda it: list(it.passages)}
    res = run_qa(items, modes, dict.fromkeys(modes, tiny_raw), max_new_tokens=3, batch_size=2, seed=0)
    assert list(res) == ["none", "raw"]
    for r in res.values():
        assert r["gold_loglik"]["ci95"][0] <= r["gold_loglik"]["mean"] <= r["gold_loglik"]["ci95"][1] <= 0
    compared = res["none"]["compared"]["raw"]
    assert compared["n"] == 2  # the two answerable questions
    assert "compared" not in res["raw"] and "loglik_diff" in compared
    assert compared["loglik_diff"]["value"] == pytest.approx(res["none"]["gold_loglik"]["mean"] - res["raw"]["gold_loglik"]["mean"])
    assert "Against **raw**" in qa_markdown("toy", {"split": "s", "n": 3, "seed": 0}, res)


def test_fidelity_rows_of_one_kind_at_several_ratios_form_one_curve():
    from icae_rag.eval.plots import fidelity_curves

    def row(kind, span, ratio):
        return {"compressor": kind, "span_tokens": span, "compression_ratio": ratio,
                "bleu4": {"mean": 1 / ratio, "ci95": [0.0, 1.0]}}

    rows = [row("icae", 128, 8.0), row("icae", 128, 2.0), row("icae", 512, 4.0), row("icae", 128, 4.0),
            row("e2llm", 128, 16.0), {"compressor": "icae", "span_tokens": 128, "compression_ratio": 3.0}]
    curves = fidelity_curves({"rows": rows})
    assert set(curves) == {("icae", 128), ("icae", 512), ("e2llm", 128)}
    assert [r["compression_ratio"] for r in curves[("icae", 128)]] == [2.0, 4.0, 8.0]


def test_qa_summary_reports_the_share_of_looping_answers():
    from icae_rag.eval.qa import QAItem, qa_markdown, score_predictions

    items = [QAItem(str(i), "Q?", ("Paris",), ["p"]) for i in range(3)] + [QAItem("u", "Q?", (), ["p"])]
    predictions = ["Paris", "The answer is: The answer is: The answer is:", "Paris is the capital", "x y z x y z x y z"]
    scores = score_predictions(predictions, items, seed=0)
    assert scores["repeated_4gram"]["mean"] == 0.5  # over every answer, unanswerable ones included
    table = qa_markdown("toy", {"split": "s", "n": 4, "seed": 0},
                        {"raw": scores | {"mean_context_positions": 1, "compression_ratio": 1.0}})
    assert "repeated 4-gram" in table and "| 0.500 |" in table


def test_bench_loop_stop_option(tiny_raw, monkeypatch):
    from icae_rag.eval.qa import QAItem, run_qa

    seen = []
    real = type(tiny_raw).answer_many

    def spy(self, questions, contexts, **generation):
        seen.append(generation)
        return real(self, questions, contexts, **generation)

    monkeypatch.setattr(type(tiny_raw), "answer_many", spy)
    items = [QAItem("a", "Which word?", ("word3",), ["word1 word2 word3"])]
    modes, readers = {"raw": lambda it: list(it.passages)}, {"raw": tiny_raw}
    run_qa(items, modes, readers, max_new_tokens=2, batch_size=1, seed=0)
    run_qa(items, modes, readers, max_new_tokens=2, batch_size=1, seed=0, no_repeat_ngram_size=0)
    assert seen == [{"max_new_tokens": 2}, {"max_new_tokens": 2, "no_repeat_ngram_size": 0}]
    with pytest.raises(InvalidInputError, match="no-repeat-ngram"):
        validate(BenchOptions(suite="qa", no_repeat_ngram_size=-1, compressors=["raw"]))


def test_qa_compares_each_mode_with_raw_on_the_same_items():
    from icae_rag.eval.qa import QAItem, contained_vs, qa_markdown

    items = [QAItem(str(i), "Q?", ("Paris",), ["p"]) for i in range(4)] + [QAItem("u", "Q?", (), ["p"])]
    raw = ["Paris", "Paris", "no", "Paris", "Paris"]
    half = ["Paris", "no", "no", "no", "Paris"]  # the unanswerable item's answer does not count
    vs_raw = contained_vs(half, raw, items, seed=0)
    assert vs_raw["ratio"] == pytest.approx(1 / 3)
    assert vs_raw["ci95"][0] <= 1 / 3 <= vs_raw["ci95"][1] <= 1.0
    assert contained_vs(half, ["no"] * 5, items, seed=0) is None  # raw answered nothing: no ratio
    row = {"mean_context_positions": 1, "compression_ratio": 4.0, "contained_vs_raw": vs_raw}
    assert "| 0.33x (" in qa_markdown("toy", {"split": "s", "n": 5, "seed": 0}, {"kvzip": row})
