"""int4 / int2 kvzip memories: error within each group's scale, pre-RoPE keys, files, old files, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TEXT
from icae_rag import KvMemory, Memory, new_compressor
from icae_rag.errors import ConfigError, CorruptFileError
from icae_rag.memories.kv_quant import SMALL_HEAD_ENTRIES, key_groups, pack, unpack, value_group
from icae_rag.models.backbones import TINY_DECODER
from icae_rag.models.hf_compat import output_cache
from icae_rag.models.kv_attention import rerotate, rotary, rotate_each

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def exact():
    """Float32 kvzip at 4x on the tiny decoder: the entries the quantised memories start from."""
    return new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4, storage="float32")


def _int(storage, ratio=4, **kw):
    return new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=ratio, storage=storage, **kw)


def _element_scales(m: KvMemory) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale each stored key and value element was quantised with."""
    q = m.quant
    group = int(q["q_group"][1])
    index, small, _ = key_groups(m.counts, group)
    dim = q["q_key_scale"].shape[1]
    key_scale = torch.empty(m.kept_entries, dim)
    key_scale[~small] = q["q_key_scale"].float()[index[~small]]
    key_scale[small] = q["q_key_entry_scale"].float().repeat_interleave(value_group(group, dim), dim=1)
    value_scale = q["q_value_scale"].float().repeat_interleave(value_group(group, dim), dim=1)
    return key_scale, value_scale


@pytest.mark.parametrize("storage", ["int4", "int2"])
@pytest.mark.parametrize("group", [8, 32, 128])
@pytest.mark.parametrize("ratio", [4, 16])  # at 16x some heads keep < SMALL_HEAD_ENTRIES: keys per entry
def test_round_trip_error_is_within_half_a_scale(storage, group, ratio):
    source = _int("float32", ratio).compress(TEXT)
    m = _int(storage, ratio, quant_group=group).compress(TEXT)
    assert m.storage == storage and torch.equal(m.positions.long(), source.positions.long())
    keys, values = source.float_entries()
    plain = rotate_each(keys, -(source.positions.long() + source.prefix_tokens), rotary(_int("float32").decoder.model))
    got_keys, got_values = m.dequantised()
    key_scale, value_scale = _element_scales(m)
    eps = 1e-3 * (1 + keys.abs().max())  # float16 rounding of the zero points
    assert ((got_keys - plain).abs() <= key_scale / 2 + eps).all()
    assert ((got_values - values).abs() <= value_scale / 2 + eps).all()
    small = int(m.counts[m.counts < SMALL_HEAD_ENTRIES].sum())
    assert m.quant["q_key_entry_scale"].shape[0] == small and (small > 0) == (ratio == 16)
    big_heads = m.counts[m.counts >= SMALL_HEAD_ENTRIES]
    assert m.quant["q_key_scale"].shape[0] == int(((big_heads + group - 1) // group).sum())


def test_pre_rotary_keys_rotated_back_equal_the_stored_rotated_keys(exact):
    model = exact.decoder.model
    m = exact.compress(TEXT)
    keys, _ = m.float_entries()
    at = m.positions.long() + m.prefix_tokens
    plain = rotate_each(keys, -at, rotary(model))
    torch.testing.assert_close(rotate_each(plain, at, rotary(model)), keys, atol=1e-5, rtol=1e-5)
    # Rotating pre-RoPE keys straight to the reader's positions = re-rotating the stored keys by delta.
    torch.testing.assert_close(rotate_each(plain, at + 9, rotary(model)), rerotate(keys, 9, rotary(model)),
                               atol=1e-5, rtol=1e-5)
    # Pre-RoPE keys do not depend on where the text was encoded.
    ids = torch.tensor([exact.tokenize(TEXT)])
    n = ids.shape[1]
    with torch.no_grad():
        a = output_cache(model(input_ids=ids, position_ids=torch.arange(n)[None], use_cache=True)).layers[0]
        b = output_cache(model(input_ids=ids, position_ids=torch.arange(5, 5 + n)[None], use_cache=True)).layers[0]
    for head in range(a.keys.shape[1]):
        torch.testing.assert_close(rotate_each(a.keys[0, head], -torch.arange(n), rotary(model)),
                                   rotate_each(b.keys[0, head], -torch.arange(5, 5 + n), rotary(model)),
                                   atol=1e-5, rtol=1e-5)


def test_reader_keys_are_the_dequantised_keys_rotated_to_its_positions(exact):
    m = _int("int4").compress(TEXT)
    rot = rotary(exact.decoder.model)
    keys, values, valid, positions = m.cache_tensors(11, rot, torch.float32, torch.device("cpu"))
    plain, plain_values = m.dequantised()
    expected = rotate_each(plain, m.positions.long() + m.prefix_tokens + 11, rot)
    at = 0
    for layer in range(m.layers):
        got = keys[layer][valid[layer]]  # (head, column) order = the memory's (head, position) order
        torch.testing.assert_close(got, expected[at:at + got.shape[0]])
        torch.testing.assert_close(values[layer][valid[layer]], plain_values[at:at + got.shape[0]])
        assert torch.equal(positions[layer][valid[layer]], m.positions[at:at + got.shape[0]].long() + m.prefix_tokens + 11)
        at += got.shape[0]
    assert at == m.kept_entries


@pytest.mark.parametrize("storage", ["int4", "int2"])
def test_int_memories_answer_end_to_end_and_survive_a_file(tmp_path, storage):
    comp = _int(storage)
    m = comp.compress(TEXT)
    m.save(tmp_path / "m.safetensors")
    back = Memory.load(tmp_path / "m.safetensors")
    assert isinstance(back, KvMemory) and back.storage == storage
    assert all(torch.equal(a, b) for a, b in zip(m.tensors().values(), back.tensors().values(), strict=True))
    assert back.nbytes() == m.nbytes() == sum(t.numel() * t.element_size() for t in m.tensors().values())
    assert (tmp_path / "m.safetensors").stat().st_size < m.nbytes() + 8192  # the header aside, nothing else
    first = comp.answer("Who stayed in orbit?", [m, "A raw note."], max_new_tokens=4)
    assert first.token_ids == comp.answer("Who stayed in orbit?", [back, "A raw note."], max_new_tokens=4).token_ids
    pruned = m.pruned(m.kept_entries // 2)
    assert pruned.storage == storage and pruned.kept_entries == m.kept_entries // 2
    assert comp.answer("Who?", [pruned], max_new_tokens=2).token_ids


def test_positions_are_int16_and_written_as_the_smaller_of_list_and_bitmap(tmp_path):
    dense = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0, storage="int4").compress(TEXT)
    sparse = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=32, storage="int4").compress(TEXT)
    assert dense.positions.dtype == sparse.positions.dtype == torch.int16
    assert "position_bits" in dense.tensors() and "positions" not in dense.tensors()
    assert "positions" in sparse.tensors() and "position_bits" not in sparse.tensors()
    for name, m in (("dense", dense), ("sparse", sparse)):
        m.save(tmp_path / f"{name}.safetensors")
        back = Memory.load(tmp_path / f"{name}.safetensors")
        assert torch.equal(back.positions, m.positions) and back.positions.dtype == torch.int16


def test_truncated_or_edited_int4_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    _int("int4").compress(TEXT).save(path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 50])
    with pytest.raises(CorruptFileError):
        Memory.load(tmp_path / "cut.safetensors")
    for at in (-3, len(data) // 2):
        edited = bytearray(data)
        edited[at] ^= 0x55
        (tmp_path / "edited.safetensors").write_bytes(bytes(edited))
        with pytest.raises(CorruptFileError):
            Memory.load(tmp_path / "edited.safetensors")


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_files_written_before_int4_still_load(storage):
    m = Memory.load(FIXTURES / f"kvzip-e2aed8f-{storage}.safetensors")
    assert isinstance(m, KvMemory) and m.storage == storage and m.quant is None
    assert m.positions.dtype == torch.int32 and m.kept_entries == 26
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4, storage=storage)
    assert comp.answer("Who?", [m], max_new_tokens=2).token_ids
    # The version names the windowing (changed at d1c6a88), so a store recomputes these files; quant_group,
    # which changes no float or int8 entry, must not move the version of either.
    regrouped = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4, storage=storage, quant_group=64)
    assert comp.version == regrouped.version and m.compressor_version.startswith("kvzip-")


def test_kv_memory_pieces_span_the_passage_positions_its_entries_carry():
    # 0.1 writers gave a KV memory's piece positions no meaning (a budget check wrote (0, 1)): they are
    # set to the passage positions instead, in old files and new memories alike.
    from icae_rag.memories.soft_prompt import Piece

    for storage in ("float16", "int8"):
        m = Memory.load(FIXTURES / f"kvzip-e2aed8f-{storage}.safetensors")
        assert [(p.position_start, p.position_end) for p in m.pieces] == [(0, m.source_tokens)]
        assert int(m.positions.max()) < m.pieces[0].position_end
    counts = torch.tensor([[2, 1]], dtype=torch.int32)
    m = KvMemory.from_entries(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 9, 4]), counts, "float32",
                              pieces=(Piece("0" * 64, 0, 6, 0, 1), Piece("0" * 64, 6, 10, 7, 7)), prefix_tokens=0,
                              prefix_sha256="1" * 64, compressor="kvzip", compressor_version="v",
                              backbone="tiny@0")
    assert [(p.position_start, p.position_end) for p in m.pieces] == [(0, 6), (6, 10)]

@pytest.mark.parametrize("bad", [dict(storage="int3"), dict(storage="INT4"), dict(storage="uint4"),
                                 dict(quant_group=4), dict(quant_group=48), dict(quant_group=32.0),
                                 dict(quant_group=True), dict(quant_group="32")])
def test_bad_storage_or_group_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, **bad)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("dim", [6, 16, 17])
def test_pack_unpack_round_trip(bits, dim):
    codes = torch.randint(0, 1 << bits, (5, dim), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (5, -(-dim * bits // 8)) and packed.dtype == torch.uint8
    assert torch.equal(unpack(packed, bits, dim), codes)


def test_inconsistent_quantisation_tensors_are_refused():
    import dataclasses

    from icae_rag.errors import InvalidInputError

    m = _int("int4").compress(TEXT)
    for name in ("q_key_scale", "q_value_zero", "q_key_entry_scale"):
        quant = dict(m.quant)
        quant[name] = torch.zeros(quant[name].shape[0] + 1, max(1, quant[name].shape[1]), dtype=torch.float16)
        with pytest.raises(InvalidInputError, match=name):
            dataclasses.replace(m, quant=quant)
    with pytest.raises(InvalidInputError, match="codes"):
        dataclasses.replace(m, keys=m.keys[:, :-1], values=m.values[:, :-1])


def test_passages_of_32768_tokens_or_more_keep_int32_positions(tmp_path):
    from icae_rag.memories.soft_prompt import Piece

    torch.manual_seed(0)
    counts = torch.tensor([[3, 20], [0, 40]], dtype=torch.int32)
    n = int(counts.sum())
    positions = torch.cat([torch.randperm(40000)[:int(c)].sort().values for c in counts.reshape(-1)])
    provenance = dict(pieces=(Piece("0" * 64, 0, 40000, 0, 40000),), prefix_tokens=5, prefix_sha256="1" * 64,
                      compressor="kvzip", compressor_version="kvzip-test", backbone="tiny@0")
    m = KvMemory._quantised(torch.randn(n, 16), torch.randn(n, 16), positions, counts, 4, 8, **provenance)
    assert m.positions.dtype == torch.int32 and "positions" in m.tensors()  # 63 x 4 bytes < the bitmap
    m.save(tmp_path / "long.safetensors")
    back = Memory.load(tmp_path / "long.safetensors")
    assert torch.equal(back.positions, m.positions) and back.storage == "int4"
