"""Bad input to `icae-rag`: a typed error and exit 2 before any model (or torch) is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from icae_rag.errors import EmptyTextError, MissingFileError, NotAFileError, NotTextError
from icae_rag.text import check_text, decode_text, read_document

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI in a fresh interpreter, then reports its exit code and whether torch was imported.
PROBE = ("import json, sys\n"
         "from icae_rag.cli import main\n"
         "code = main(sys.argv[1:])\n"
         "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, "
         "'transformers': 'transformers' in sys.modules}))\n")


def run_cli(*argv: str) -> tuple[dict, dict]:
    """(the CLI's JSON error, the probe's report) for `icae-rag <argv>` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, f"expected the error and the probe report, got {proc.stdout!r} / {proc.stderr!r}"
    return json.loads(lines[0]), json.loads(lines[1])


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.txt"
    path.write_text("The Rhine flows to the North Sea.")
    return path


def _bad_file(tmp_path: Path, case: str) -> str:
    path = tmp_path / f"{case}.txt"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "whitespace":
        path.write_bytes(b" \n\t\n")
    elif case == "nul":
        path.write_bytes(b"\x00" * 4096)
    elif case == "binary":
        path.write_bytes(bytes(range(1, 9)) * 500)  # control characters, no NUL, valid UTF-8
    elif case == "latin1":
        path.write_bytes("Caf\u00e9 au lait.".encode("latin-1"))
    return str(path)


@pytest.mark.parametrize(("case", "error_type", "words"), [
    ("directory", "NotAFileError", "is a directory"),
    ("missing", "MissingFileError", "does not exist"),
    ("empty", "EmptyTextError", "empty"),
    ("whitespace", "EmptyTextError", "empty"),
    ("nul", "NotTextError", "NUL"),
    ("binary", "NotTextError", "control characters"),
    ("latin1", "NotTextError", "not UTF-8"),
])
@pytest.mark.parametrize("command", ["ask", "compress"])
def test_bad_context_file_is_refused_before_any_model(tmp_path, case, error_type, words, command):
    path = _bad_file(tmp_path, case)
    argv = (["ask", "--json", "--context", path, "What?"] if command == "ask"
            else ["compress", "--json", path, "-o", str(tmp_path / "out.safetensors")])
    error, probe = run_cli(*argv)
    assert probe["code"] == 2 and error["type"] == error_type and words in error["error"], error
    assert not probe["torch"] and not probe["transformers"], "a model library was imported before the check"


@pytest.mark.parametrize("question", ["", "   \n "])
def test_empty_question_blames_the_question(good, question):
    error, probe = run_cli("ask", "--json", "--context", str(good), question)
    assert probe["code"] == 2 and error["type"] == "EmptyTextError"
    assert "question" in error["error"] and str(good) not in error["error"]
    assert not probe["torch"]


def test_question_checked_before_the_files(tmp_path):
    error, probe = run_cli("ask", "--json", "--context", str(tmp_path / "missing.txt"), " ")
    assert probe["code"] == 2 and error["type"] == "EmptyTextError"


@pytest.mark.parametrize("argv", [
    ["ask", "--json", "What?"],                                  # --context missing
    ["ask", "--json", "--context", "x.txt", "--budget", "many", "What?"],
    ["ask", "--json", "--no-such-flag", "--context", "x.txt", "What?"],
    ["--json", "nonsense"],
])
def test_argparse_errors_are_json(argv):
    error, probe = run_cli(*argv)
    assert probe["code"] == 2 and error["type"] == "UsageError" and error["error"]
    assert not probe["torch"]


def test_bad_numbers_are_refused_before_any_model(good):
    for flag in ("--budget", "--max-new-tokens"):
        error, probe = run_cli("ask", "--json", "--context", str(good), flag, "0", "What?")
        assert probe["code"] == 2 and error["type"] == "InvalidInputError" and flag in error["error"]
        assert not probe["torch"]


def test_an_explicit_builtin_compressor_does_not_import_torch_before_the_checks(tmp_path):
    from icae_rag.cli import BUILTIN_KINDS
    from icae_rag.compressors.base import _REGISTRY

    # Exactly the kinds icae_rag itself registers (other tests may register their own for a while).
    own = sorted(kind for kind, (_, cls) in _REGISTRY.items() if cls.__module__.startswith("icae_rag."))
    assert list(BUILTIN_KINDS) == own, "BUILTIN_KINDS must list the kinds icae_rag.compressors registers"
    for kind in ("raw", "kvzip:ratio=8"):
        error, probe = run_cli("ask", "--json", "--compressor", kind, "--context", str(tmp_path), "What?")
        assert probe["code"] == 2 and error["type"] == "NotAFileError" and not probe["torch"]


def test_reconstruct_of_a_directory_is_refused_before_any_model(tmp_path):
    error, probe = run_cli("reconstruct", "--json", str(tmp_path))
    assert probe["code"] == 2 and error["type"] == "NotAFileError" and not probe["torch"]


def test_errors_without_json_go_to_stderr(capsys, tmp_path):
    from icae_rag.cli import main

    assert main(["ask", "--context", str(tmp_path), "What?"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "is a directory" in out.err
    assert main(["ask", "--context"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: icae-rag ask") and "error:" in err


# --- the shared checks, as the library and the QA app use them ---------------------------------
def test_check_text_names_what_it_checks():
    with pytest.raises(EmptyTextError, match="the question is empty"):
        check_text("  ", what="question")
    with pytest.raises(NotTextError, match="NUL"):
        check_text("abc\x00def")
    with pytest.raises(NotTextError, match="control characters"):
        check_text("\x01\x02\x03\x04 a")
    # Overstrike bold in a rendered man page (a backspace per bold letter) is still text.
    man = "N\bNA\bAM\bME\bE\n     tar - an archiving utility\n" * 50
    assert check_text(man) == man


def test_decode_text_is_strict_utf8():
    assert decode_text("\ufeffcaf\u00e9".encode()) == "caf\u00e9"
    with pytest.raises(NotTextError, match="UTF-16"):
        decode_text("text".encode("utf-16"))
    with pytest.raises(NotTextError, match="byte 3"):
        decode_text(b"caf\xe9")


def test_read_document_streams_blocks(tmp_path, monkeypatch):
    from icae_rag import text as text_module

    monkeypatch.setattr(text_module, "READ_BLOCK_BYTES", 7)
    path = tmp_path / "doc.txt"
    content = "\ufeff" + "Z\u00fcrich \u2014 caf\u00e9 \U0001f600 na\u00efve.\n" * 20
    path.write_text(content, encoding="utf-8")
    # Multi-byte characters cut by block ends are joined; the BOM is dropped.
    assert read_document(path) == content[1:]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a" * 20 + b"\xff" + b"b" * 20)
    with pytest.raises(NotTextError, match="byte 20"):
        read_document(bad)
    with pytest.raises(NotAFileError):
        read_document(tmp_path)
    with pytest.raises(MissingFileError):
        read_document(tmp_path / "nope.txt")


def test_the_checks_import_no_model_library():
    code = ("import sys, icae_rag.cli, icae_rag.text, icae_rag.data.retrieval; "
            "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_the_library_refuses_binary_text_before_encoding(tiny_raw):
    with pytest.raises(NotTextError, match="NUL"):
        tiny_raw.compress_many(["fine text", "bad\x00text"])
    with pytest.raises(EmptyTextError):
        tiny_raw.compress_many([" \n"])
