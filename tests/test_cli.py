"""The `icae-rag` CLI on tiny checkpoints: JSON output, compress/reconstruct, typed errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEXT, same_memory
from icae_rag.cli import main
from icae_rag.compressors.base import CONFIG_NAME
from icae_rag.memories.base import Memory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ckpt(tiny_icae, tmp_path):
    return str(tiny_icae.save_pretrained(tmp_path / "icae"))


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ask_json(capsys, tiny_icae, ckpt, tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(TEXT)
    question = "When did Apollo 11 land?"
    code, out, err = run(capsys, "ask", "--json", "--checkpoint", ckpt, "--context", str(ctx),
                         "--max-new-tokens", "3", "--device", "cpu", question)
    assert code == 0
    result = json.loads(out)
    # The short text fits the budget whole: the CLI must report what the Python API gives for it.
    memory = tiny_icae.compress(TEXT)
    expected = tiny_icae.answer(question, [memory], max_new_tokens=3)
    assert result["answer"] == expected.text and result["new_tokens"] == expected.new_tokens
    assert result["input_tokens"] == expected.source_tokens == len(tiny_icae.tokenize(TEXT))
    assert result["context_positions"] == result["soft_tokens"] == memory.num_positions  # the 0.1 key until 0.3
    assert result["decoder_positions"] == expected.input_positions
    assert result["compression_ratio"] == round(expected.compression_ratio, 3) > 2
    assert (result["compressor"], result["trained"], result["retrieved"]) == ("icae", False, False)
    assert [(c["file"], c["start"], c["end"]) for c in result["chunks"]] == [(str(ctx), 0, len(TEXT))]
    assert result["seconds"] >= result["answer_seconds"] > 0
    assert "untrained" in err


def test_compress_then_reconstruct(capsys, tiny_icae, ckpt, tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(TEXT)
    out_file = tmp_path / "memory.safetensors"
    code, out, _ = run(capsys, "compress", str(ctx), "-o", str(out_file), "--checkpoint", ckpt, "--json",
                       "--device", "cpu")
    assert code == 0 and out_file.is_file()
    memory = tiny_icae.compress(TEXT)
    assert same_memory(Memory.load(out_file), memory), "the file holds the Python API's memory of the text"
    result = json.loads(out)
    assert result["context_positions"] == result["soft_tokens"] == memory.num_positions  # the 0.1 key until 0.3
    assert (result["input_tokens"], result["pieces"]) == (memory.source_tokens, len(memory.pieces))
    assert result["compression_ratio"] == round(memory.compression_ratio, 3) and result["output"] == str(out_file)
    code, out, _ = run(capsys, "reconstruct", str(out_file), "--checkpoint", ckpt, "--json", "--device", "cpu")
    result = json.loads(out)
    assert code == 0 and result["text"] == tiny_icae.reconstruct(memory)
    assert (result["compressor"], result["context_positions"]) == ("icae", memory.num_positions)


def test_compress_reports_the_kvzip_check(capsys, tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(TEXT)
    out_file = tmp_path / "memory.safetensors"
    code, out, _ = run(capsys, "compress", str(ctx), "-o", str(out_file), "--compressor",
                       "kvzip:decoder=tiny-llama,fidelity=0.3", "--json", "--device", "cpu")
    result = json.loads(out)
    assert code == 0 and result["fidelity_target"] == 0.3 and 0.3 <= result["fidelity"] <= 1
    assert result["compression_ratio"] > 1
    code, out, _ = run(capsys, "compress", str(ctx), "-o", str(out_file), "--compressor",
                       "kvzip:decoder=tiny-llama,ratio=4", "--json", "--device", "cpu")
    assert json.loads(out)["fidelity"] is None


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["versions"]["icae_rag"] and "cache_dir" in info and info["device"]


def test_errors_are_typed_and_json(capsys, tmp_path):
    code, out, _ = run(capsys, "ask", "--json", "--context", str(tmp_path / "missing.txt"), "Q?")
    assert code == 2 and json.loads(out)["type"] == "MissingFileError"
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    code, out, _ = run(capsys, "ask", "--json", "--context", str(binary), "Q?")
    assert code == 2 and json.loads(out)["type"] == "NotTextError" and "UTF-8" in json.loads(out)["error"]
    code, _, err = run(capsys, "ask", "--checkpoint", str(tmp_path), "--context", str(binary), "Q?")
    assert code == 2 and "error" in err
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"garbage")
    code, out, _ = run(capsys, "reconstruct", str(corrupt), "--json")
    assert code == 2 and json.loads(out)["type"] == "CorruptFileError"


def test_unknown_compressor_is_rejected_by_the_parser(capsys):
    code, out, _ = run(capsys, "ask", "--json", "--compressor", "zip", "--context", "x", "Q?")
    assert code == 2 and json.loads(out)["type"] == "UsageError" and "zip" in json.loads(out)["error"]


def test_index_defaults_to_the_default_kind():
    from icae_rag import DEFAULT_KIND
    from icae_rag.cli import build_parser

    parser = build_parser()
    assert DEFAULT_KIND == "kvzip"
    assert parser.parse_args(["index", "docs", "--store", "m.lance"]).compressor == DEFAULT_KIND
    assert parser.parse_args(["ask", "--context", "x.txt", "Q?"]).compressor == DEFAULT_KIND


def test_the_project_s_own_warnings_reach_stderr(ckpt, tmp_path):
    # A checkpoint written by a newer icae-rag (an unknown config key) loads with a warning the user sees,
    # through the real console entry point (a fresh process: stderr as the user gets it).
    config = Path(ckpt) / CONFIG_NAME
    meta = json.loads(config.read_text())
    meta["config"]["a_future_option"] = 1
    config.write_text(json.dumps(meta))
    ctx = tmp_path / "doc.txt"
    ctx.write_text(TEXT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", "import sys; from icae_rag.cli import main; sys.exit(main())",
                           "compress", str(ctx), "-o", str(tmp_path / "m.safetensors"), "--checkpoint", ckpt,
                           "--device", "cpu", "--json"], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ignoring IcaeConfig keys ['a_future_option'] written by a newer icae-rag" in proc.stderr
    # "Untrained" stays the CLI's own plain line (where a command reports it), not a Python warning too.
    assert "is marked untrained" not in proc.stderr
