"""Training on tiny models: loss falls, exact resume, checkpoints, multi-process parity, bad configs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icae_rag import load_compressor
from icae_rag.errors import CheckpointError, ConfigError, DataError, MissingFileError
from icae_rag.training.config import load_config, train_config_from_dict
from icae_rag.training.ship import ship
from icae_rag.training.trainer import lr_at, train

WORDS = "the cat sat on a mat while dogs ran in the park and birds sang over green hills".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "text.jsonl"
    with path.open("w") as f:
        for _ in range(30):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(120))}) + "\n")
    return path


@pytest.fixture(scope="module")
def qa(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    with path.open("w") as f:
        for i in range(20):
            f.write(json.dumps({"context": f"Room {i} is painted {WORDS[i % len(WORDS)]}.",
                                "question": f"What colour is room {i}?", "answer": WORDS[i % len(WORDS)]}) + "\n")
    return path


def tiny_config(corpus: Path, out: Path, **overrides) -> dict:
    base = {
        "compressor": "icae", "stage": "pretrain",
        "compressor_config": {"decoder": "tiny-llama", "span_tokens": 32, "ratio": 4, "lora_r": 4, "lora_alpha": 8},
        "data": [{"name": "jsonl-text", "path": str(corpus)}],
        "output_dir": str(out), "sample_tokens": 32, "continuation_tokens": 16, "steps": 6, "micro_batch": 2,
        "lr": 1e-3, "warmup_steps": 1, "save_every": 100, "eval_fraction": 0.2, "threads": 1,
    }
    return base | overrides


def losses(out: Path) -> list[float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def test_loss_falls(corpus, tmp_path):
    # One fixed batch, repeated: a working loop must fit it.
    cfg = train_config_from_dict(tiny_config(corpus, tmp_path / "run", steps=25, lr=1e-2, micro_batch=2,
                                       data=[{"name": "jsonl-text", "path": str(corpus), "max_items": 1}],
                                       ae_lambda=1.0, continuation_tokens=1))
    train(cfg, progress=False)
    seen = losses(tmp_path / "run")
    assert sum(seen[-3:]) / 3 < 0.85 * sum(seen[:3]) / 3, seen


def test_resume_replays_exactly(corpus, tmp_path):
    full = train_config_from_dict(tiny_config(corpus, tmp_path / "a"))
    train(full, progress=False)
    split = train_config_from_dict(tiny_config(corpus, tmp_path / "b"))
    stopped = train(split, stop_after_steps=3, progress=False)
    assert stopped.name == "checkpoint" and len(losses(tmp_path / "b")) == 3
    final = train(split, resume=tmp_path / "b", progress=False)
    assert final.name == "final"
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-4, abs=1e-5)
    a = load_compressor(tmp_path / "a" / "final", device="cpu")
    b = load_compressor(final, device="cpu")
    text = "the cat sat on a mat while dogs ran"
    torch.testing.assert_close(a.compress(text).embeddings, b.compress(text).embeddings, rtol=1e-4, atol=1e-5)


def test_final_checkpoint_is_trained_and_records_the_run(corpus, tmp_path):
    final = train(train_config_from_dict(tiny_config(corpus, tmp_path / "r", steps=2)), progress=False)
    meta = json.loads((final / "compressor_config.json").read_text())
    assert meta["trained"] is True
    info = meta["training"]
    assert info["steps"] == 2 and info["config"]["seed"] == 0 and info["data"]["train_samples"] > 0
    assert info["tokens_per_second"] > 0 and info["peak_rss_mb"] > 0
    assert info["val_loss"] > 0 and info["val_loss_no_memory"] > 0 and info["val_loss"] != info["val_loss_no_memory"]
    once = load_compressor(final, device="cpu").compress("the cat sat")
    again = load_compressor(final, device="cpu").compress("the cat sat")
    assert torch.equal(once.embeddings, again.embeddings)

    shipped = ship(final.parent, "tiny-shipped", command="icae-rag train ...", dest_root=tmp_path / "ckpts")
    card = (shipped / "README.md").read_text()
    assert f"steps: {info['steps']}" in card and f"{info['val_loss']:.3f}" in card and "icae-rag train ..." in card
    assert torch.equal(load_compressor(shipped, device="cpu").compress("the cat sat").embeddings, once.embeddings)
    ship(final.parent, "tiny-shipped", dest_root=tmp_path / "ckpts")  # replacing a shipped checkpoint is fine
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["tiny-shipped"]


def test_ship_refuses_an_unfinished_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a finished run"):
        ship(tmp_path, "x", dest_root=tmp_path / "ckpts")


def test_finetune_on_user_qa_jsonl(qa, corpus, tmp_path):
    pre = train(train_config_from_dict(tiny_config(corpus, tmp_path / "pre", steps=1)), progress=False)
    cfg = train_config_from_dict(tiny_config(corpus, tmp_path / "ft", stage="finetune", init_from=str(pre),
                                       compressor_config={}, data=[{"name": "jsonl-qa", "path": str(qa)}], steps=2))
    final = train(cfg, progress=False)
    info = json.loads((final / "compressor_config.json").read_text())["training"]
    assert info["stage"] == "finetune" and info["previous"]["stage"] == "pretrain"


def test_keep_unanswerable_subsamples_unanswerable_questions_only(tmp_path):
    from icae_rag.models.backbones import load_decoder
    from icae_rag.training.samples import build_samples

    path = tmp_path / "qa.jsonl"
    with path.open("w") as f:
        for i in range(200):
            f.write(json.dumps({"context": f"Room {i} is blue.", "question": f"Colour of room {i}?",
                                "answer": [] if i % 2 else "blue"}) + "\n")
    tok = load_decoder("tiny-llama", device="cpu").tokenizer

    def split(keep: float):
        cfg = train_config_from_dict(tiny_config(path, tmp_path, stage="finetune", data=[
            {"name": "jsonl-qa", "path": str(path), "keep_unanswerable": keep}]))
        return build_samples(cfg, tok)

    full, some = split(1.0), split(0.2)
    assert full.record["sources"][0]["unanswerable"] == 100
    kept = some.record["sources"][0]["unanswerable"]
    assert 5 < kept < 40, kept
    answered = [s.id for s in some.train + some.val if s.target != "unanswerable"]
    assert len(answered) == 100, "every answerable question is kept"
    assert split(0.2).record == some.record, "the choice is a function of the seed"
    with pytest.raises(ConfigError, match="keep_unanswerable"):
        train_config_from_dict(tiny_config(path, tmp_path, stage="finetune", data=[
            {"name": "jsonl-qa", "path": str(path), "keep_unanswerable": 1.5}]))


def test_bad_configs_fail_before_training(corpus, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'stepz'") as err:
        train_config_from_dict(tiny_config(corpus, tmp_path, stepz=3, lrr=2))
    assert "lrr" in str(err.value), "every bad key is reported at once"
    with pytest.raises(ConfigError, match="plain text"):
        train_config_from_dict(tiny_config(corpus, tmp_path, stage="finetune"))
    with pytest.raises(ConfigError, match="unknown data source"):
        train_config_from_dict(tiny_config(corpus, tmp_path, data=[{"name": "wikitext2-test"}]))
    with pytest.raises(MissingFileError):
        train(train_config_from_dict(tiny_config(tmp_path / "missing.jsonl", tmp_path / "x")), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        train(train_config_from_dict(tiny_config(empty, tmp_path / "y")), progress=False)
    assert not (tmp_path / "x" / "metrics.jsonl").exists() and not (tmp_path / "y" / "metrics.jsonl").exists()
    with pytest.raises(MissingFileError):
        load_config(tmp_path / "nope.yaml")


def test_compressor_config_is_checked_by_the_kinds_config_class(corpus, tmp_path):
    bad = {"ratoi": 4, "spam": 1, "span_tokens": 30}
    with pytest.raises(ConfigError, match="compressor_config") as err:
        train_config_from_dict(tiny_config(corpus, tmp_path, compressor_config=bad, lr=-1.0, steps=0))
    message = str(err.value)
    assert "'ratoi'" in message and "'spam'" in message and "valid keys" in message, "every unknown key at once"
    assert "steps must be positive" in message, "with the rest of the config's errors"
    with pytest.raises(ConfigError, match="divisible"):
        train_config_from_dict(tiny_config(corpus, tmp_path, compressor_config={"span_tokens": 30, "ratio": 4}))
    with pytest.raises(ConfigError, match="mapping"):
        train_config_from_dict(tiny_config(corpus, tmp_path, compressor_config=[4]))


def test_resume_refuses_a_changed_config(corpus, tmp_path):
    train(train_config_from_dict(tiny_config(corpus, tmp_path / "r")), stop_after_steps=1, progress=False)
    with pytest.raises(ConfigError, match="config changed"):
        train(train_config_from_dict(tiny_config(corpus, tmp_path / "r", lr=0.5)), resume=tmp_path / "r", progress=False)


def test_lr_schedule():
    cfg = train_config_from_dict({"compressor": "icae", "stage": "pretrain", "data": [{"name": "gutenberg"}],
                            "steps": 100, "warmup_steps": 10, "lr": 1.0})
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=0.01)


def test_shipped_configs_resolve_to_what_their_files_say():
    """Each trainable kind ships a pretrain and a fine-tune config, and each loads to its file's values."""
    import yaml

    from icae_rag.compressors import compressor_kinds
    from icae_rag.compressors.base import compressor_config_from_dict, get_compressor_class

    paths = sorted((Path(__file__).parent.parent / "icae_rag" / "configs").glob("*.yaml"))
    expected = {f"{kind}-{stage}.yaml" for kind in compressor_kinds(trainable=True) for stage in ("pretrain", "finetune")}
    assert {p.name for p in paths} == expected
    for path in paths:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        cfg = load_config(path)
        assert f"{cfg.compressor}-{cfg.stage}" == path.stem, "the file name says what the config trains"
        resolved = cfg.to_dict()
        # Every key the file sets reaches the run as written (none dropped, renamed or defaulted over).
        assert {k: resolved[k] for k in raw if k != "data"} == {k: v for k, v in raw.items() if k != "data"}, path
        assert [{k: src[k] for k in given} for src, given in zip(resolved["data"], raw["data"], strict=True)] \
            == raw["data"], path
        assert all(src.is_qa == (cfg.stage == "finetune") for src in cfg.data), path
        # The kind's own config class accepts the compressor settings and keeps their values.
        built = compressor_config_from_dict(get_compressor_class(cfg.compressor)[0], cfg.compressor_config, strict=True)
        assert {k: getattr(built, k) for k in raw["compressor_config"]} == raw["compressor_config"], path
        assert load_config(path, {"steps": 7}).steps == 7, "a --set override wins over the file"


def _run_cli(args: list[str], launcher: list[str]) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, "-m", "icae_rag.cli", "train", "icae", "--stage", "pretrain", "--json", *args],
                   check=True, env=env, capture_output=True, timeout=600)


@pytest.mark.timeout(1300)  # two training runs, each with its own 600 s subprocess limit
def test_two_processes_match_one_with_doubled_accumulation(corpus, tmp_path):
    """Two processes under `accelerate launch` == one process with grad_accum 2.

    `accelerate launch --cpu` starts a single process (several CPU processes need MPI there), so
    this uses the multi-GPU launcher users run on GPUs; without a GPU it starts gloo CPU processes.
    """
    import yaml

    for name, accum in (("one", 2), ("two", 1)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(tiny_config(corpus, tmp_path / name, steps=3,
                                                                          grad_accum=accum)))
    _run_cli(["--config", str(tmp_path / "one.yaml")], [sys.executable])
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _run_cli(["--config", str(tmp_path / "two.yaml")], accelerate)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-3)
    one = load_compressor(tmp_path / "one" / "final", device="cpu").trainable_state_dict()
    two = load_compressor(tmp_path / "two" / "final", device="cpu").trainable_state_dict()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-3, atol=1e-5)


def test_model_card_qa_rows_read_raw_none_compressor_then_baseline():
    from icae_rag.training.ship import model_card

    meta = {"compressor_type": "icae", "config": {"ratio": 4},
            "backbones": {"decoder": {"name": "dec", "fingerprint": "f" * 64}}}
    row = {"mean_context_positions": 10.0, "compression_ratio": 4.0,
           "contained": {"mean": 0.5, "ci95": [0.4, 0.6]}}
    res = {"suite": "qa", "options": {"limit": 2, "seed": 0},
           "environment": {"git_commit": "abc", "hardware": {"processor": "cpu", "cpu_count": 2},
                           "versions": {"torch": "2"}},
           "qa": {"squad": {"record": {"split": "held out", "n": 2},
                            "results": {m: row for m in ("e2llm", "icae", "longllmlingua", "none", "raw")}}}}
    card = model_card("tiny", meta, [res], "cmd")
    modes = [line.split("|")[1].strip() for line in card.splitlines() if line.startswith("| ") and "0.500" in line]
    assert modes == ["raw", "none", "icae", "longllmlingua"]
