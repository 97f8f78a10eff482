"""Contract every compressor meets, plus checkpoints and bad input (tiny random backbones)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from conftest import TEXT, TINY_E2LLM, TINY_ICAE, same_memory
from icae_rag import KvMemory, load_compressor, new_compressor
from icae_rag.compressors.base import CONFIG_NAME, WEIGHTS_NAME
from icae_rag.errors import (
    BackboneMismatchError,
    CheckpointError,
    ConfigError,
    CorruptFileError,
    DeviceError,
    InvalidInputError,
    UnknownCompressorError,
)


def _randomise(compressor):
    """Give the trainable tensors non-initial values, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in compressor.trainable_state_dict().values():
            tensor.add_(0.01 * torch.randn(tensor.shape, generator=g).to(tensor.dtype))


def test_soft_prompt_shape_and_provenance(tiny_compressor):
    prompt = tiny_compressor.compress(TEXT)
    cfg = tiny_compressor.decoder.model.config
    if isinstance(prompt, KvMemory):
        assert tuple(prompt.counts.shape) == (cfg.num_hidden_layers, cfg.num_key_value_heads)
        assert prompt.keys.shape[1] == cfg.hidden_size // cfg.num_attention_heads
    else:
        d = tiny_compressor.decoder.hidden_size
        assert prompt.embeddings.shape[1] == d and prompt.embeddings.dtype == tiny_compressor.decoder.dtype
    n_tokens = len(tiny_compressor.tokenize(TEXT))
    flat = [i for p in prompt.pieces for i in range(p.token_start, p.token_end)]
    assert flat == list(range(n_tokens)), "pieces must cover every source token exactly once"
    assert prompt.source_tokens == n_tokens
    assert prompt.compressor == tiny_compressor.kind
    assert prompt.backbone == tiny_compressor.backbone_id


def test_icae_multi_span_keeps_ratio(tiny_icae):
    n = len(tiny_icae.tokenize(TEXT))
    prompt = tiny_icae.compress(TEXT)
    spans = math.ceil(n / TINY_ICAE["span_tokens"])
    assert len(prompt.pieces) == spans > 1
    assert prompt.num_positions == sum(math.ceil(p.source_tokens / 4) for p in prompt.pieces)
    assert prompt.compression_ratio > 3.5


def test_e2llm_chunks_at_sentences(tiny_e2llm):
    chunks = tiny_e2llm.chunk(TEXT)
    assert all(e - s <= 24 for s, e, _ in chunks)
    assert "".join(c for _, _, c in chunks).replace(" ", "") == TEXT.replace(" ", "")
    prompt = tiny_e2llm.compress(TEXT)
    assert prompt.num_positions == 2 * len(chunks)


def test_batched_equals_one_by_one(tiny_compressor):
    texts = [TEXT, "A short one.", TEXT[:150]]
    batched = tiny_compressor.compress_many(texts, batch_size=4)
    for text, prompt in zip(texts, batched, strict=True):
        single = tiny_compressor.compress(text)
        assert single.pieces == prompt.pieces
        for name, tensor in single.tensors().items():
            torch.testing.assert_close(tensor, prompt.tensors()[name], rtol=1e-4, atol=1e-5)


def test_deterministic_under_seed():
    a = new_compressor("icae", device="cpu", **TINY_ICAE)
    b = new_compressor("icae", device="cpu", **TINY_ICAE)
    assert torch.equal(a.compress(TEXT).embeddings, b.compress(TEXT).embeddings)
    c = new_compressor("icae", device="cpu", **(TINY_ICAE | {"seed": 5}))
    assert not torch.equal(a.compress(TEXT).embeddings, c.compress(TEXT).embeddings)


def test_checkpoint_round_trip_gives_identical_soft_prompts(tiny_compressor, tmp_path):
    _randomise(tiny_compressor)
    before = tiny_compressor.compress(TEXT)
    tiny_compressor.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    expected = {CONFIG_NAME, WEIGHTS_NAME} if tiny_compressor.trainable_state_dict() else {CONFIG_NAME}
    assert files == expected
    loaded = load_compressor(tmp_path / "ckpt", device="cpu")
    after = loaded.compress(TEXT)
    assert same_memory(before, after)
    assert after.compressor_version == before.compressor_version
    meta = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert meta["compressor_type"] == tiny_compressor.kind and "icae_rag" in meta["versions"]


def test_version_changes_with_weights(tiny_icae):
    before = tiny_icae.version
    _randomise(tiny_icae)
    assert tiny_icae.version != before


def test_checkpoint_for_another_backbone_is_refused(tiny_icae, tmp_path):
    tiny_icae.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / CONFIG_NAME
    meta = json.loads(path.read_text())
    meta["backbones"]["decoder"]["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(meta))
    with pytest.raises(BackboneMismatchError, match="was made for decoder"):
        load_compressor(tmp_path / "ckpt", device="cpu")


def test_soft_prompt_of_another_compressor_is_refused(tiny_icae, tiny_e2llm):
    with pytest.raises(BackboneMismatchError):
        tiny_e2llm.answer("Who?", [tiny_icae.compress(TEXT)], max_new_tokens=2)


def test_corrupted_checkpoints(tiny_icae, tmp_path):
    ckpt = tiny_icae.save_pretrained(tmp_path / "ckpt")
    weights = ckpt / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptFileError):
        load_compressor(ckpt, device="cpu")
    (ckpt / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CorruptFileError):
        load_compressor(ckpt, device="cpu")
    (ckpt / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="not an icae_rag checkpoint"):
        load_compressor(ckpt, device="cpu")


def test_checkpoint_with_wrong_tensors(tiny_icae, tmp_path):
    from safetensors.torch import save_file

    ckpt = tiny_icae.save_pretrained(tmp_path / "ckpt")
    save_file({"memory": torch.zeros(2, 2)}, str(ckpt / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="do not match"):
        load_compressor(ckpt, device="cpu")


@pytest.mark.parametrize("bad", ["", "   \n\t", None, 42, b"bytes"])
def test_bad_text_is_a_typed_error(tiny_compressor, bad):
    with pytest.raises(InvalidInputError):
        tiny_compressor.compress(bad)


def test_unknown_compressor_device_dtype_and_config():
    with pytest.raises(UnknownCompressorError, match="choose one of"):
        new_compressor("zip")
    with pytest.raises(UnknownCompressorError):
        load_compressor("not-a-kind-or-dir")
    with pytest.raises(DeviceError):
        new_compressor("raw", device="tpu", decoder="tiny-llama")
    with pytest.raises(DeviceError):
        new_compressor("raw", device="cpu", dtype="fp16", decoder="tiny-llama")
    with pytest.raises(ConfigError, match="unknown IcaeConfig keys"):
        new_compressor("icae", device="cpu", decoder="tiny-llama", span_tokenz=4)
    with pytest.raises(ConfigError, match="divisible"):
        new_compressor("icae", device="cpu", decoder="tiny-llama", span_tokens=30, ratio=4)


@pytest.mark.parametrize("kind", ["e2llm", "icae", "kvzip", "raw"])
def test_build_is_declared_once_and_refuses_unknown_options(kind):
    from icae_rag.compressors import Compressor, get_compressor_class

    config_cls, cls = get_compressor_class(kind)
    # One decoder-only build on the base; only e2llm (which also loads an encoder) overrides it.
    assert ("build" in vars(cls)) == (kind == "e2llm") and "build" in vars(Compressor)
    with pytest.raises(ConfigError, match=r"unknown options \['ratios'\].*\['device', 'dtype'\]"):
        cls.build(config_cls(), device="cpu", ratios=8)
    other = get_compressor_class("raw" if kind != "raw" else "icae")[0]
    with pytest.raises(ConfigError, match=f"needs a {config_cls.__name__}"):
        cls.build(other(), device="cpu")


def test_memory_is_the_return_type_every_kind_shares(tiny_raw):
    import inspect

    from icae_rag.compressors import Compressor

    assert inspect.signature(Compressor.compress).return_annotation == "Memory"
    assert inspect.signature(Compressor.compress_many).return_annotation == "list[Memory]"
    texts, leads = tiny_raw.check_inputs(["one", "two"], None)
    assert texts == ["one", "two"] and leads == [None, None]
    assert tiny_raw.check_inputs(["one"], [None]) == (["one"], [None])
    with pytest.raises(InvalidInputError, match="cannot use leads"):
        tiny_raw.check_inputs(["one"], ["before"])
    with pytest.raises(InvalidInputError, match="2 leads"):
        tiny_raw.check_inputs(["one", "two"], ["before"])


@pytest.mark.parametrize("kind,config", [("icae", TINY_ICAE), ("e2llm", TINY_E2LLM)])
def test_untrained_init_depends_on_config_seed_only(kind, config):
    torch.manual_seed(123)
    first = new_compressor(kind, device="cpu", **config).trainable_state_dict()
    torch.manual_seed(456)
    state = torch.get_rng_state()
    second = new_compressor(kind, device="cpu", **config).trainable_state_dict()
    assert torch.equal(torch.get_rng_state(), state), "building a compressor must not consume the caller's RNG"
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_untrained_default_warns(monkeypatch):
    import icae_rag.compressors as c

    monkeypatch.setattr(c, "shipped_checkpoint", lambda kind: None)
    monkeypatch.setattr(c, "new_compressor", lambda kind, **kw: new_compressor("raw", device="cpu", decoder="tiny-llama")
                        if kind == "raw" else _Untrained())
    with pytest.warns(UserWarning, match="untrained"):
        c.load_compressor("icae")


class _Untrained:
    trained = False


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Frobenius norm of the difference over the reference's norm."""
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_bf16_compression_gives_the_fp32_memory_to_bf16_precision(tiny_icae):
    prompt = tiny_icae.compress(TEXT)
    moved = prompt.to(dtype=torch.bfloat16)
    assert moved.embeddings.dtype == torch.bfloat16 and moved.pieces == prompt.pieces
    # A cast rounds each value once: bf16 keeps 8 significant bits (relative step 2**-8).
    assert torch.equal(moved.embeddings, prompt.embeddings.to(torch.bfloat16))
    bf = new_compressor("icae", device="cpu", dtype="bf16", **TINY_ICAE)
    computed = bf.compress(TEXT)
    assert computed.embeddings.dtype == torch.bfloat16 and computed.pieces == prompt.pieces
    # Computing in bf16 compounds rounding through the decoder's layers (measured: ~4% here), far below
    # the gap between two different memories (another init seed or another text: ~130%).
    assert _relative_error(computed.embeddings, prompt.embeddings) < 0.1


def test_e2llm_attention_adapter_round_trip(tmp_path):
    from conftest import TINY_E2LLM

    comp = new_compressor("e2llm", device="cpu", **(TINY_E2LLM | {"adapter": "attention", "adapter_hidden": 32}))
    _randomise(comp)
    prompt = comp.compress(TEXT)
    assert prompt.num_positions == 2 * len(comp.chunk(TEXT))
    loaded = load_compressor(comp.save_pretrained(tmp_path / "ckpt"), device="cpu")
    assert torch.equal(loaded.compress(TEXT).embeddings, prompt.embeddings)


def test_icae_span_anchors_start_at_the_anchor_tokens(tmp_path):
    cfg = TINY_ICAE | {"slot_source": "span_anchors"}
    comp = new_compressor("icae", device="cpu", **cfg)
    ids = comp.tokenize(TEXT)
    prompt = comp.compress(TEXT)
    anchors = [min(s + 4 * (j + 1), e) - 1 for p in prompt.pieces for s, e in [(p.token_start, p.token_end)]
               for j in range(math.ceil((e - s) / 4))]
    expected = comp.decoder.embed_ids(torch.tensor([ids[a] for a in anchors]))
    torch.testing.assert_close(prompt.embeddings, expected)  # zero-initialised residual
    assert "memory" not in comp.trainable_state_dict()
    _randomise(comp)
    moved = comp.compress(TEXT)
    assert not torch.equal(moved.embeddings, expected)
    loaded = load_compressor(comp.save_pretrained(tmp_path / "ckpt"), device="cpu")
    assert torch.equal(loaded.compress(TEXT).embeddings, moved.embeddings)


def test_e2llm_with_encoder_and_decoder_lora_round_trip(tmp_path):
    from conftest import TINY_E2LLM

    comp = new_compressor("e2llm", device="cpu", **(TINY_E2LLM | {"adapter": "attention", "encoder_lora_r": 2,
                                                                  "decoder_lora_r": 2}))
    plain = new_compressor("e2llm", device="cpu", **(TINY_E2LLM | {"adapter": "attention"}))
    assert any(k.startswith("encoder_lora.") for k in comp.trainable_state_dict())
    assert any(k.startswith("decoder_lora.") for k in comp.trainable_state_dict())
    _randomise(comp)
    prompt = comp.compress(TEXT)
    answer = comp.answer("When?", [prompt], max_new_tokens=4)
    loaded = load_compressor(comp.save_pretrained(tmp_path / "ckpt"), device="cpu")
    assert torch.equal(loaded.compress(TEXT).embeddings, prompt.embeddings)
    assert loaded.answer("When?", [prompt], max_new_tokens=4).token_ids == answer.token_ids
    # The decoder LoRA is the compressor's own: another compressor's decoder is untouched.
    assert not any("lora" in n for n, _ in plain.decoder.model.named_parameters())


def _last_row_contained(readme: str, mode: str) -> str:
    """The contained share in the README's last table row for `mode`."""
    rows = [line for line in readme.splitlines() if line.startswith(f"| {mode} |")]
    return rows[-1].split("|")[4].split()[0]


@pytest.mark.parametrize("kind", ["icae", "e2llm"])
def test_shipped_note_quotes_the_checkpoint_readme(kind):
    from icae_rag.compressors import shipped_checkpoint, shipped_note

    readme = (shipped_checkpoint(kind) / "README.md").read_text()
    note = shipped_note(kind)
    assert "\n" not in note and "CPU-trained demonstration" in note and f"`icae-rag train {kind}`" in note
    own, none = _last_row_contained(readme, kind), _last_row_contained(readme, "none")
    assert f"contain the gold answer {own} of the time vs {none} with no context" in note


def test_loading_a_shipped_checkpoint_logs_one_line(tiny_icae, tmp_path, monkeypatch, caplog):
    import logging

    import icae_rag.compressors as compressors

    tiny_icae.trained = True
    tiny_icae.save_pretrained(tmp_path / "icae-tiny")
    readme = compressors.SHIPPED_DIR / compressors.SHIPPED["icae"] / "README.md"
    (tmp_path / "icae-tiny" / "README.md").write_text(readme.read_text())
    monkeypatch.setattr(compressors, "SHIPPED_DIR", tmp_path)
    monkeypatch.setitem(compressors.SHIPPED, "icae", "icae-tiny")
    with caplog.at_level(logging.INFO, logger="icae_rag"):
        load_compressor("icae", device="cpu")
    assert [r.getMessage() for r in caplog.records] == [compressors.shipped_note("icae")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="icae_rag"):
        load_compressor(tiny_icae.save_pretrained(tmp_path / "own"), device="cpu")
    assert caplog.records == [], "a checkpoint of one's own is not the shipped demonstration"


def test_a_compressors_own_memory_passes_its_check_and_fills_the_context(tiny_raw):
    memory = tiny_raw.compress("The lighthouse keeper counted ships.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_raw.check_memory(memory)
    answer = tiny_raw.answer("Who counted?", [memory], max_new_tokens=1)
    assert answer.context_positions > 0
