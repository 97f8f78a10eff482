"""SoftPrompt: save/load bit-identical, concat, device/dtype moves, corrupted files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from icae_rag.errors import (
    BackboneMismatchError,
    CorruptFileError,
    InvalidInputError,
    MissingFileError,
)
from icae_rag.memories.soft_prompt import Piece, SoftPrompt, text_sha256


def make(n: int = 5, d: int = 8, version: str = "v1", dtype=torch.float32) -> SoftPrompt:
    g = torch.Generator().manual_seed(n)
    sha = text_sha256("source")
    return SoftPrompt(torch.randn(n, d, generator=g).to(dtype), (Piece(sha, 0, 4 * n, 0, n),), "icae", version,
                      "tiny@abc")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_is_bit_identical(tmp_path, dtype):
    prompt = make(dtype=dtype)
    prompt.save(tmp_path / "p.safetensors")
    loaded = SoftPrompt.load(tmp_path / "p.safetensors")
    assert loaded.embeddings.dtype == dtype
    assert torch.equal(loaded.embeddings, prompt.embeddings)
    assert loaded.pieces == prompt.pieces
    assert (loaded.compressor, loaded.compressor_version, loaded.backbone) == ("icae", "v1", "tiny@abc")
    assert not list(tmp_path.glob(".*tmp")), "no temp file may be left behind"


def test_ratio_and_counts():
    prompt = make(n=5)
    assert prompt.num_positions == 5 and prompt.source_tokens == 20 and prompt.compression_ratio == 4.0
    two_rows = SoftPrompt(torch.zeros(2, 4), (Piece("x", 0, 3, 0, 2),), "raw", "v", "elsewhere")
    assert two_rows.num_positions == 2 and two_rows.compression_ratio == 1.5


def test_concat_shifts_pieces_and_rejects_mixed_versions():
    a, b = make(3), make(4)
    joined = SoftPrompt.concat([a, b])
    assert joined.num_positions == 7
    assert [(p.position_start, p.position_end) for p in joined.pieces] == [(0, 3), (3, 7)]
    assert torch.equal(joined.embeddings[3:], b.embeddings)
    with pytest.raises(BackboneMismatchError):
        SoftPrompt.concat([a, make(2, version="v2")])
    with pytest.raises(InvalidInputError):
        SoftPrompt.concat([])


def test_to_changes_dtype_not_provenance():
    prompt = make().to(dtype=torch.bfloat16)
    assert prompt.embeddings.dtype == torch.bfloat16 and prompt.compressor_version == "v1"


def test_pieces_must_cover_rows():
    with pytest.raises(InvalidInputError):
        SoftPrompt(torch.zeros(3, 2), (Piece("x", 0, 4, 0, 2),), "icae", "v", "b")


def test_truncated_file_raises_corrupt(tmp_path):
    path = tmp_path / "p.safetensors"
    make().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupted"):
        SoftPrompt.load(path)


def test_garbage_and_foreign_files_raise_corrupt(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptFileError):
        SoftPrompt.load(tmp_path / "g.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(CorruptFileError, match="not an icae_rag memory"):
        SoftPrompt.load(tmp_path / "f.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError):
        SoftPrompt.load(tmp_path / "nope.safetensors")


def test_a_file_written_by_0_1_loads_with_its_pieces_context_positions(tmp_path):
    # 0.1 wrote a piece as [sha, token_start, token_end, slot_start, slot_end]; files older still carry
    # no "format" key. Written here by hand, as those versions wrote them, not by this version's code.
    from safetensors.torch import save_file

    sha = text_sha256("source")
    header = {"format_version": 1, "compressor": "icae", "compressor_version": "v1", "backbone": "tiny@abc",
              "pieces": [[sha, 0, 8, 0, 2], [sha, 8, 20, 2, 5]], "metadata": {}}
    save_file({"embeddings": torch.ones(5, 4)}, str(tmp_path / "old.safetensors"),
              metadata={"icae_rag": json.dumps(header)})
    loaded = SoftPrompt.load(tmp_path / "old.safetensors")
    assert [(p.position_start, p.position_end) for p in loaded.pieces] == [(0, 2), (2, 5)]
    assert [e.shape[0] for e in loaded.piece_embeddings()] == [2, 3]
    # And this version writes the same list, in the same order, so 0.1 reads its files.
    loaded.save(tmp_path / "new.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["icae_rag"])["pieces"] == header["pieces"]


def test_piece_keeps_its_0_1_names_for_a_release_with_a_warning():
    piece = Piece("x", 0, 8, 1, 3)
    assert (piece.position_start, piece.position_end) == (1, 3)
    with pytest.warns(DeprecationWarning, match="use Piece.position_start"):
        assert piece.slot_start == 1
    with pytest.warns(DeprecationWarning, match="use Piece.position_end"):
        assert piece.slot_end == 3
    with pytest.warns(DeprecationWarning, match="position_start= / position_end="):
        assert Piece("x", 0, 8, slot_start=1, slot_end=3) == piece
    assert dataclasses.replace(piece, position_end=4).position_end == 4
    with pytest.raises(TypeError, match="position_start and position_end"):
        Piece("x", 0, 8)
