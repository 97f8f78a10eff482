"""kvzip: exact budgets, re-rotation, masked = pruned caches, nothing evicted = raw text, typed errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import TEXT
from icae_rag import KvMemory, Memory, SqliteMemoryStore, new_compressor
from icae_rag.compressors.kvzip import DEFAULT_READ_RATIO
from icae_rag.compressors.kvzip.check import _check_memory, _repeat_probs
from icae_rag.decoding import (
    GenerationConfig,
    build_prompt,
    generate_from_prompts,
    reconstruct_token_ids,
    stop_token_ids,
)
from icae_rag.decoding.prefill import _extend, _prefill, _RowCache
from icae_rag.errors import (
    BackboneMismatchError,
    ConfigError,
    CorruptFileError,
    InvalidInputError,
    UnsupportedModelError,
)
from icae_rag.models.backbones import TINY_DECODER, _tiny_decoder_dir
from icae_rag.models.hf_compat import cache_arg, output_cache
from icae_rag.models.kv_attention import KvView, rerotate, rotary

SECOND = "The Saturn V rocket launched every crewed Apollo mission to the Moon from Florida."


@pytest.fixture(scope="module")
def kvzip():
    return new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4)


@pytest.fixture(scope="module")
def kv_full():
    return new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0, storage="float32")


def _first_logits(compressor, contexts, question="Who stayed in orbit?"):
    prompt = build_prompt(compressor, contexts, question=question)
    row = _RowCache.empty()
    logits = None
    with torch.no_grad():
        for seg in prompt.segments:
            logits, row = _extend(compressor.decoder, row, seg)
    return logits


@pytest.mark.parametrize("ratio", [2, 4, 8, 16])
def test_keep_budget_is_exact(ratio):
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=ratio)
    for text in (TEXT, SECOND):
        m = comp.compress(text)
        n, layers, heads = m.source_tokens, m.layers, m.kv_heads
        assert m.kept_entries == max(1, round(n * layers * heads / ratio))
        assert int(m.counts.sum()) == m.kept_entries
        assert m.compression_ratio == pytest.approx(n * layers * heads / m.kept_entries)


def test_long_passages_are_scored_in_windows_with_the_same_share():
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4, window_tokens=16, lead_tokens=8)
    m = comp.compress(TEXT)
    windows = [min(16, m.source_tokens - s) for s in range(0, m.source_tokens, 16)]
    assert m.kept_entries == sum(max(1, round(w * m.layers * m.kv_heads / 4)) for w in windows)
    assert int(m.positions.max()) < m.source_tokens


def test_windows_read_the_text_before_them_as_the_passage_computed_it(kv_full):
    # A window reads the last lead_tokens entries of the window before it as one pass over the
    # passage computed them (carried, not encoded again after less text): the second window's keys
    # equal those computed after the prefix and those carried entries of the whole pass.
    from transformers import DynamicCache

    model, dec = kv_full.decoder.model, kv_full.decoder
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0, storage="float32",
                          window_tokens=16, lead_tokens=4)
    ids = kv_full.tokenize(TEXT)
    assert len(ids) > 32, "the passage needs three windows"
    got = comp.compress(TEXT).cache_tensors(0, rotary(model), dec.dtype, dec.device)[0]
    p = len(comp._prefix_ids())
    with torch.no_grad():
        whole = output_cache(model(input_ids=comp._ids(comp._prefix_ids() + ids), use_cache=True))
        cache = DynamicCache(config=model.config)
        for i, layer in enumerate(whole.layers):
            cols = list(range(p)) + list(range(p + 12, p + 16))
            cache.update(layer.keys[:, :, cols], layer.values[:, :, cols], i)
        second = output_cache(model(input_ids=comp._ids(ids[16:32]), position_ids=torch.arange(p + 16, p + 32)[None],
                                    **cache_arg(cache), use_cache=True))
    for layer, mine, full in zip(second.layers, got, whole.layers, strict=True):
        torch.testing.assert_close(mine[..., :16, :], full.keys[0, :, p:p + 16], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mine[..., 16:32, :], layer.keys[0, :, -16:], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[-1][..., 16:32, :], whole.layers[-1].keys[0, :, p + 16:p + 32], atol=1e-3)


def test_a_lead_encodes_the_passage_inside_its_document(kv_full):
    memory = kv_full.compress_many([TEXT], leads=[SECOND])[0]
    assert memory.metadata["lead_sha256"] and memory.source_tokens == len(kv_full.tokenize(TEXT))
    model, dec = kv_full.decoder.model, kv_full.decoder
    prefix = build_prompt(kv_full, [memory], question="Q?").segments[0]
    lead, text = kv_full.tokenize(SECOND), kv_full.tokenize(TEXT)
    ids = torch.tensor([lead + text])
    with torch.no_grad():
        cache = output_cache(model(inputs_embeds=torch.cat([prefix, dec.embed_ids(ids[0])])[None], use_cache=True))
    p = prefix.shape[0] + len(lead)
    keys, _, valid, _ = memory.cache_tensors(0, rotary(model), dec.dtype, dec.device)
    assert all(bool(v.all()) for v in valid)
    for layer, got in zip(cache.layers, keys, strict=True):
        expected = rerotate(layer.keys[0, :, p:p + len(text)], -len(lead), rotary(model))
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    apart = kv_full.compress(TEXT).cache_tensors(0, rotary(model), dec.dtype, dec.device)[0]
    assert not torch.allclose(keys[-1], apart[-1])
    no_lead = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0, storage="float32",
                             lead_tokens=0).compress_many([TEXT], leads=[SECOND])[0]
    assert "lead_sha256" not in no_lead.metadata, "lead_tokens=0 encodes the passage apart"
    torch.testing.assert_close(no_lead.cache_tensors(0, rotary(model), dec.dtype, dec.device)[0][-1], apart[-1])


def test_rerotated_keys_equal_keys_computed_at_the_shifted_position(kvzip):
    model = kvzip.decoder.model
    ids = torch.tensor([kvzip.tokenize(TEXT)])
    shift = 7
    n = ids.shape[1]
    with torch.no_grad():
        at_0 = output_cache(model(input_ids=ids, position_ids=torch.arange(n)[None], use_cache=True))
        at_s = output_cache(model(input_ids=ids, position_ids=torch.arange(shift, shift + n)[None], use_cache=True))
    for a, b in zip(at_0.layers, at_s.layers, strict=True):
        torch.testing.assert_close(rerotate(a.keys, shift, rotary(model)), b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rerotate(b.keys, -shift, rotary(model)), a.keys, atol=1e-5, rtol=1e-5)


def test_nothing_evicted_reads_like_the_raw_text(kv_full):
    memory = kv_full.compress(TEXT)
    assert memory.kept_entries == memory.source_tokens * memory.layers * memory.kv_heads
    torch.testing.assert_close(_first_logits(kv_full, [memory]), _first_logits(kv_full, [TEXT]), atol=1e-4, rtol=1e-4)
    as_text = kv_full.answer("Who stayed in orbit?", [TEXT], max_new_tokens=8)
    as_memory = kv_full.answer("Who stayed in orbit?", [memory], max_new_tokens=8)
    assert as_memory.token_ids == as_text.token_ids
    # After other text a memory differs from joint text (encoded apart), but it is read, not ignored.
    after = _first_logits(kv_full, [SECOND, memory])
    assert not torch.allclose(after, _first_logits(kv_full, [SECOND]), atol=1e-3)


def test_masked_full_cache_equals_the_pruned_cache(kv_full):
    kvzip = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4, storage="float32")
    pruned, full = kvzip.compress(TEXT), kv_full.compress(TEXT)
    dec = kvzip.decoder
    prefix = build_prompt(kvzip, [pruned], question="Who?").segments
    # Full cache, with each head masked to the entries the pruned memory kept.
    _, row = _extend(dec, _RowCache.empty(), prefix[0])
    k, v, _, positions = full.cache_tensors(0, rotary(dec.model), dec.dtype, dec.device)
    kept = torch.zeros(full.layers, full.kv_heads, full.source_tokens, dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(pruned.counts.numel()), pruned.counts.reshape(-1).long())
    kept.view(-1, full.source_tokens)[owner, pruned.positions.long()] = True
    masked = _RowCache([torch.cat([a, b], 1) for a, b in zip(row.keys, k, strict=True)],
                       [torch.cat([a, b], 1) for a, b in zip(row.values, v, strict=True)],
                       [torch.cat([a, b], 1) for a, b in zip(row.valid, kept, strict=True)],
                       row.position + full.source_tokens,
                       [torch.cat([a, b], 1) for a, b in zip(row.positions, positions, strict=True)])
    _, packed = _extend(dec, row, pruned)
    assert sum(packed.columns) < sum(masked.columns)
    for seg in prefix[2:]:
        masked_logits, masked = _extend(dec, masked, seg)
        packed_logits, packed = _extend(dec, packed, seg)
    torch.testing.assert_close(masked_logits, packed_logits, atol=1e-5, rtol=1e-5)


def test_batch_of_memories_equals_one_by_one(kvzip):
    a, b = kvzip.compress(TEXT), kvzip.compress(SECOND)
    questions = ["Who stayed in orbit?", "Which rocket?", "When?"]
    contexts = [[a], [b, "A short raw note."], [a, b]]
    batch = kvzip.answer_many(questions, contexts, max_new_tokens=6)
    alone = [kvzip.answer(q, c, max_new_tokens=6) for q, c in zip(questions, contexts, strict=True)]
    assert [x.token_ids for x in batch] == [x.token_ids for x in alone]
    assert list(kvzip.stream(questions[0], contexts[0], max_new_tokens=6))  # streaming shares the path


def test_one_forward_over_all_text_equals_prefilling_segment_by_segment(kvzip):
    # _prefill lays every memory in the cache first and reads all later text in one forward, masked by
    # position; prefilling each text segment after the memories before it must give the same logits.
    a, b = kvzip.compress(TEXT), kvzip.compress(SECOND)
    contexts = [[a, "A short raw note.", b], [b], ["Raw text first.", a]]
    prompts = [build_prompt(kvzip, c, question=q) for c, q in zip(contexts, ["Who?", "Which rocket?", "When?"],
                                                                   strict=True)]
    with torch.no_grad():
        logits = _prefill(kvzip, prompts)[0]
    for got, c, q in zip(logits, contexts, ["Who?", "Which rocket?", "When?"], strict=True):
        torch.testing.assert_close(got, _first_logits(kvzip, c, q), atol=1e-4, rtol=1e-4)


def test_positions_count_kept_entries(kvzip):
    m = kvzip.compress(TEXT)
    ans = kvzip.answer("Who?", [m, SECOND], max_new_tokens=2)
    assert ans.context_positions == m.num_positions + len(kvzip.tokenize(SECOND))
    assert ans.source_tokens == m.source_tokens + len(kvzip.tokenize(SECOND))
    assert 3.5 < m.compression_ratio < 4.5


def test_soft_prompts_and_kv_memories_mix_in_one_prompt(tiny_icae, kvzip):
    memory = kvzip.compress(SECOND)
    ans = tiny_icae.answer("Who?", [tiny_icae.compress(TEXT), memory, "raw words"], max_new_tokens=3)
    assert ans.source_tokens > memory.source_tokens


def test_reconstruct_repeats_from_the_memory(kv_full):
    # Nothing evicted, fp32: the greedy repeat from the memory is the greedy repeat from the passage's own
    # text in the same "repeat" prompt (the layout the memory was computed in).
    memory, tok = kv_full.compress(SECOND), kv_full.decoder.tokenizer
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=0)
    with torch.no_grad():
        from_text = generate_from_prompts(kv_full, [build_prompt(kv_full, [SECOND], mode="repeat")], cfg)[0]
    expected = [t for t in from_text.token_ids if t not in stop_token_ids(tok)]
    assert len(expected) >= 6
    assert reconstruct_token_ids(kv_full, memory, max_new_tokens=12) == expected
    assert kv_full.reconstruct(memory, max_new_tokens=12) == tok.decode(expected, skip_special_tokens=True)
    assert reconstruct_token_ids(kv_full, kv_full.compress(TEXT), max_new_tokens=12) != expected


@pytest.mark.parametrize("storage", ["float16", "float32", "int8", "int4", "int2"])
def test_save_load_round_trip(tmp_path, storage):
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, storage=storage)
    m = comp.compress(TEXT)
    m.save(tmp_path / "m.safetensors")
    back = Memory.load(tmp_path / "m.safetensors")
    assert isinstance(back, KvMemory) and back.storage == storage
    for name in ("keys", "values", "positions", "counts"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert comp.answer("Who?", [back], max_new_tokens=3).token_ids == comp.answer("Who?", [m], max_new_tokens=3).token_ids


def test_int8_stays_close_to_float(kvzip):
    exact = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, storage="float32").compress(TEXT)
    q8 = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, storage="int8").compress(TEXT)
    (k, v), (k8, v8) = exact.float_entries(), q8.float_entries()
    assert torch.equal(exact.positions, q8.positions)
    assert (k - k8).abs().max() <= k.abs().max() / 127 and (v - v8).abs().max() <= v.abs().max() / 127
    assert q8.nbytes() < 0.6 * new_compressor("kvzip", device="cpu", decoder=TINY_DECODER).compress(TEXT).nbytes()


def test_truncated_or_edited_file_is_refused(tmp_path, kvzip):
    path = tmp_path / "m.safetensors"
    kvzip.compress(TEXT).save(path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptFileError):
        Memory.load(tmp_path / "cut.safetensors")
    edited = bytearray(data)
    edited[-3] ^= 0x55
    (tmp_path / "edited.safetensors").write_bytes(bytes(edited))
    with pytest.raises(CorruptFileError, match="checksum"):
        Memory.load(tmp_path / "edited.safetensors")


def test_memory_of_another_decoder_or_prefix_is_refused(kvzip):
    m = kvzip.compress(TEXT)
    with pytest.raises(BackboneMismatchError):
        kvzip.answer("Who?", [dataclasses.replace(m, backbone="other@0123")])
    with pytest.raises(BackboneMismatchError, match="prefix"):
        kvzip.answer("Who?", [dataclasses.replace(m, prefix_sha256="0" * 64)])


@pytest.mark.parametrize("bad", [dict(ratio=1), dict(ratio=0.5), dict(ratio="4"), dict(ratio=float("nan")),
                                 dict(keep_fraction=0), dict(keep_fraction=1.5), dict(storage="int3")])
def test_bad_config_is_a_typed_error(bad):
    with pytest.raises(ConfigError):
        new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, **bad)


def test_sqlite_store_keeps_kv_memories(tmp_path, kvzip):
    store = SqliteMemoryStore(tmp_path / "store")
    first = store.get_or_compress([TEXT, SECOND], kvzip)
    again = store.get_or_compress([TEXT, SECOND], kvzip)
    assert store.stats.writes == 2 and all(isinstance(m, KvMemory) for m in again)
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(first, again, strict=True))


def _tiny_dir(tmp_path_factory, name, config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp(name)
    tokenizer = AutoTokenizer.from_pretrained(str(_tiny_decoder_dir()))
    config.vocab_size = len(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


ARCHS = {
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def other_family(request, tmp_path_factory):
    """A kvzip compressor (nothing evicted, float32) on a tiny random decoder of another rotary family."""
    import transformers

    cls, extra = ARCHS[request.param]
    config = getattr(transformers, cls)(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **extra)
    path = _tiny_dir(tmp_path_factory, request.param, config)
    return new_compressor("kvzip", device="cpu", decoder=path, keep_fraction=1.0, storage="float32")


def test_other_rotary_families_read_memories_like_text(other_family):
    memory = other_family.compress(TEXT)
    torch.testing.assert_close(_first_logits(other_family, [memory]), _first_logits(other_family, [TEXT]),
                               atol=1e-4, rtol=1e-4)
    test_rerotated_keys_equal_keys_computed_at_the_shifted_position(other_family)


def test_non_rotary_decoder_is_refused(tmp_path_factory):
    from transformers import GPT2Config

    path = _tiny_dir(tmp_path_factory, "gpt2", GPT2Config(n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        new_compressor("kvzip", device="cpu", decoder=path)


def test_memories_read_together_share_one_budget_mostly_chosen_by_the_question():
    from icae_rag.decoding.selection import QUESTION_SHARE, _entry_columns, _recorded
    from icae_rag.decoding.selection import question_choice as chosen

    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=2, read_ratio=4)
    a, b = comp.compress_many([TEXT, SECOND])
    full = [m.source_tokens * m.layers * m.kv_heads for m in (a, b)]
    assert [m.kept_entries for m in (a, b)] == [round(n / 2) for n in full]
    entries = round(sum(full) / 4)
    # Without a question (the repeat prompt): the highest stored scores over both memories.
    pa, pb = comp.budget_contexts([a, "raw text", b])[::2]
    assert pa.kept_entries + pb.kept_entries == entries
    assert set(pa.scores.tolist()) <= set(a.scores.tolist())
    low = min(float(pa.scores.min()), float(pb.scores.min()))
    dropped = [s for m, p in ((a, pa), (b, pb)) for s in m.scores.tolist() if s not in set(p.scores.tolist())]
    assert max(dropped) <= low  # the kept entries are the highest scores over both memories
    # With a question: the answer prompt lays out every stored entry; its prefill scores each by the
    # attention the question's text gives it, from that entry's own cache column.
    contexts = [a, "raw text", b]
    prompt = build_prompt(comp, contexts, question="Who?")
    assert prompt.read_entries == entries and [s for s in prompt.segments if isinstance(s, KvMemory)] == [a, b]
    view = _prefill(comp, [prompt], record=True).view
    text = sum(s.shape[0] for s in prompt.segments[1:] if not isinstance(s, KvMemory))
    asked = _recorded(view, 0, _entry_columns(prompt, [v.shape[2] - text for v in view.valid]))
    assert len(asked) == a.kept_entries + b.kept_entries and bool((asked > 0).all())
    keep = torch.cat(chosen(comp, prompt))
    share = round(entries * QUESTION_SHARE)
    assert 0.5 < QUESTION_SHARE < 1 and 0 < share < entries  # the stored scores choose some of it
    assert int(keep.sum()) == entries and bool(keep[asked.topk(share).indices].all())
    rest = torch.ones_like(keep)
    rest[asked.topk(share).indices] = False  # the rest: the highest stored scores among the others
    stored = torch.cat([a.scores, b.scores]).float()
    assert float(stored[rest & keep].min()) >= float(stored[rest & ~keep].max())
    qa, qb = comp.budget_contexts(contexts, question="Who?")[::2]
    assert qa.kept_entries + qb.kept_entries == entries
    assert comp.answer("Who?", [a, b], max_new_tokens=2).context_positions == math.ceil(entries / (a.layers * a.kv_heads))
    # Memories stored below the read budget are read as stored.
    assert comp.budget_contexts([pa, pb], question="Who?") == [pa, pb]
    assert build_prompt(comp, [pa, pb], question="Who?").read_entries is None


def test_the_answer_reads_a_packed_cache_of_the_chosen_entries():
    from icae_rag.decoding.selection import _packed, _read_mask, keep_read_entries

    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0, read_ratio=3)
    whole = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0)
    m = comp.compress(TEXT)
    prompt = build_prompt(comp, [m, "raw text", m], question="Who?")
    full = _prefill(comp, [prompt], record=True)
    # The question read every entry: the first token's logits are the whole memories'.
    whole_prompt = build_prompt(whole, [m, "raw text", m], question="Who?")
    assert whole_prompt.read_entries is None
    assert torch.allclose(keep_read_entries(comp, [prompt], full).logits, _prefill(whole, [whole_prompt]).logits)
    mask = _read_mask([prompt], full.view)
    prefix, width = prompt.segments[0].shape[0], [int(c.max()) for c in m.counts]
    assert sum(int(v[0, :, prefix:prefix + 2 * w].sum()) for v, w in zip(mask, width, strict=True)) == prompt.read_entries
    assert all(bool(v[0, :, :prefix].all() and v[0, :, prefix + 2 * w:].all()) for v, w in zip(mask, width, strict=True))
    cache, valid = _packed(comp, full.cache, mask)
    for before, after in zip(full.cache.layers, cache.layers, strict=True):
        assert after.keys.shape[2] < before.keys.shape[2]  # packed: the cache shrinks
    # Packing moves columns, not what a later token reads: the same logits as masking in place.
    ids, outs = torch.tensor([[5, 9]]), []
    for c, v in ((cache, valid), (_prefill(comp, [prompt], record=True).cache, mask)):
        out = comp.decoder.model(inputs_embeds=comp.decoder.embed_ids(ids), position_ids=full.positions + torch.arange(2),
                                 **cache_arg(c), use_cache=True, kv_view=KvView(valid=v))
        outs.append(out.logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_the_default_stores_every_entry_and_reads_a_share():
    default, whole = (new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, **kw) for kw in ({}, dict(keep_fraction=1.0)))
    assert default.config.read_at == DEFAULT_READ_RATIO and whole.config.read_at is None
    # Same stored entries, same version: a store shares them; read_ratio changes only what is read.
    assert default.version == whole.version == new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, read_ratio=5).version
    m = default.compress(TEXT)
    assert m.kept_entries == m.source_tokens * m.layers * m.kv_heads and m.scores is not None
    first, second = default.budget_contexts([m, m], question="Who?")
    assert first.kept_entries + second.kept_entries == round(2 * m.kept_entries / DEFAULT_READ_RATIO)
    read = round(2 * m.kept_entries / DEFAULT_READ_RATIO)
    assert default.answer("Who?", [m, m], max_new_tokens=2).context_positions == math.ceil(read / (m.layers * m.kv_heads))
    assert whole.answer("Who?", [m, m], max_new_tokens=2).context_positions == 2 * m.num_positions
    # fidelity, ratio or keep_fraction store less and are read as stored unless read_ratio is given.
    for kw in (dict(fidelity=0.9), dict(ratio=4), dict(keep_fraction=0.5)):
        assert new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, **kw).config.read_at is None
    assert new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=2, read_ratio=4).config.read_at == 4


def test_an_answer_reuses_the_prefix_and_runs_one_forward_per_token(kv_full):
    m = kv_full.compress(TEXT)
    prompt = build_prompt(kv_full, [m], question="Who?")
    dec = kv_full.decoder
    fresh = _prefill(kv_full, [prompt], prefix_row=_extend(dec, _RowCache.empty(), prompt.segments[0])[1]).logits
    assert torch.allclose(_prefill(kv_full, [prompt]).logits, fresh, atol=1e-4)  # the kept prefix, as if run again
    calls = []
    hook = dec.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        kv_full.answer("Who?", [m], max_new_tokens=1)
        assert len(calls) == 1  # the text after the kept prefix; no step after the last token
        calls.clear()
        kv_full.answer("Who?", [m], max_new_tokens=3, stop=())
        assert len(calls) <= 3
    finally:
        hook.remove()


def test_two_memories_in_context_read_like_the_joint_text(kv_full):
    # B encoded after A and the blank line between them, nothing evicted: the decoder must read
    # [A, B] exactly as the two raw texts, so offsets, separators and re-rotation of a second memory are right.
    first = kv_full.compress(SECOND)
    second = kv_full.compress_many([TEXT], leads=[SECOND + "\n\n"])[0]
    sep = kv_full.decoder.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    assert kv_full.tokenize(SECOND + "\n\n") == kv_full.tokenize(SECOND) + sep
    torch.testing.assert_close(_first_logits(kv_full, [first, second]), _first_logits(kv_full, [SECOND, TEXT]),
                               atol=1e-4, rtol=1e-4)


# --- adaptive budget -------------------------------------------------------------------------------

def _curve(slope, power=1):
    """An overlap curve whose loss grows with log(ratio) ** power, and the ratios it was read at."""
    import math

    asked = []

    def overlap_at(ratio):
        asked.append(ratio)
        return 1 - slope * math.log(ratio) ** power
    return overlap_at, asked


@pytest.mark.parametrize("slope", [0.001, 0.005, 0.01, 0.02, 0.05, 0.2])
@pytest.mark.parametrize("fidelity", [0.9, 0.95, 0.97, 0.99])
def test_search_takes_the_largest_passing_step_in_two_checks(slope, fidelity):
    # The search's model: loss grows with log(ratio) squared above the first step, linearly below.
    # On such a curve it finds the largest passing step; on any curve it passes or keeps everything.
    import math

    from icae_rag.compressors.kvzip import LADDER, START_RATIO
    from icae_rag.compressors.kvzip.check import _search

    for power in (1, 2):
        first_passes = 1 - slope * math.log(START_RATIO) ** power >= fidelity
        overlap_at, asked = _curve(slope, power)
        ratio, overlap = _search(overlap_at, LADDER, fidelity)
        passing = [r for r in LADDER if 1 - slope * math.log(r) ** power >= fidelity]
        assert len(asked) <= 2
        assert overlap >= fidelity and (ratio == 1.0) == (overlap == 1.0) and ratio in (*passing, 1.0)
        if power == (2 if first_passes else 1):
            assert ratio == (max(passing) if passing else 1.0)


def test_search_keeps_everything_when_no_step_passes_and_respects_the_ladder():
    from icae_rag.compressors.kvzip.check import _search

    assert _search(lambda r: 0.5, (16.0, 8.0, 4.0, 2.0), 0.9) == (1.0, 1.0)
    assert _search(lambda r: 1.0, (3.0, 2.0), 0.9) == (3.0, 1.0)  # never beyond the ladder's largest step
    assert _search(lambda r: 1.0, (), 0.9) == (1.0, 1.0)


def test_chosen_budget_is_monotone_in_fidelity():
    from icae_rag.compressors.kvzip import LADDER
    from icae_rag.compressors.kvzip.check import _search

    for slope in (0.003, 0.01, 0.03):
        chosen = [_search(_curve(slope)[0], LADDER, f)[0] for f in (0.8, 0.9, 0.95, 0.97, 0.99, 0.999)]
        assert chosen == sorted(chosen, reverse=True)
    comp = {f: new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=f, storage="float32")
            for f in (0.3, 0.6, 0.9)}
    ratios = [comp[f].compress(TEXT).compression_ratio for f in (0.3, 0.6, 0.9)]
    assert ratios == sorted(ratios, reverse=True)


def test_check_grades_the_worst_block_so_a_long_window_cannot_average_a_loss_away():
    from icae_rag.compressors.kvzip import CHECK_BLOCK_TOKENS
    from icae_rag.compressors.kvzip.check import _overlap

    vocab, n = 8, 8 * CHECK_BLOCK_TOKENS
    reference = torch.zeros(n, vocab)
    reference[:, 0] = 1.0
    got = reference.clone()
    # One block of the window predicts half of its mass elsewhere; the other seven are untouched.
    lost = slice(3 * CHECK_BLOCK_TOKENS, 4 * CHECK_BLOCK_TOKENS)
    got[lost, 0], got[lost, 1] = 0.5, 0.5
    mean = float(torch.minimum(reference, got).sum(-1).mean())
    assert mean == pytest.approx(1 - 0.5 / 8)  # the window's mean would pass at fidelity 0.9
    assert _overlap(reference, got) == pytest.approx(0.5)
    assert _overlap(reference, reference) == pytest.approx(1.0)
    # A window shorter than one block is graded as one block.
    assert _overlap(reference[:10], got[:10]) == pytest.approx(1.0)


def test_probes_are_the_most_surprising_tokens_with_a_full_cue_and_apart():
    from icae_rag.compressors.kvzip import PROBE_CUE, PROBE_SPAN, PROBES
    from icae_rag.compressors.kvzip.check import _probes

    ids = list(range(100, 200))
    surprisal = torch.zeros(100)
    surprisal[5] = 9.0  # too early: no full cue before it
    surprisal[98] = 9.0  # too late: no full span from it
    surprisal[40], surprisal[42], surprisal[70] = 5.0, 4.0, 3.0  # 42 is too close to 40
    probes = _probes(ids, surprisal)
    starts = [ids.index(span[0]) for _, span in probes]
    assert len(probes) == PROBES and starts == sorted(starts)  # in window order
    assert 40 in starts and 70 in starts and 42 not in starts and 5 not in starts and 98 not in starts
    assert all(b - a >= PROBE_SPAN + PROBE_CUE // 2 for a, b in zip(starts, starts[1:], strict=False))
    for cue, span in probes:
        t = ids.index(span[0])
        assert cue == ids[t - PROBE_CUE:t] and span == ids[t:t + PROBE_SPAN]
    assert _probes(ids[:PROBE_CUE + PROBE_SPAN - 1], surprisal) == []  # too short to probe


def test_surprisal_is_the_decoder_reading_the_text_itself():
    from icae_rag.compressors.kvzip.check import _surprisal

    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]))
    got = _surprisal(logits, [0, 1, 2])  # logits[i] follow ids[i]
    assert got.tolist() == pytest.approx([0.0, -math.log(0.25), -math.log(0.8)])


def test_probes_come_from_the_decoder_reading_the_window_in_either_scoring_pass():
    from transformers import DynamicCache

    from icae_rag.compressors.kvzip.check import _probes, _surprisal
    from icae_rag.decoding import prompt_texts

    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.9, storage="float32", window_tokens=64)
    tok = comp.decoder.tokenizer
    repeat_ids = tok(prompt_texts(tok, "repeat")[1], add_special_tokens=False)["input_ids"]
    windows = [comp.tokenize(TEXT)[:64], comp.tokenize(SECOND + " " + TEXT)[:48]]
    prefix = comp._prefix_ids()
    with torch.no_grad():
        expected = []
        for ids in windows:
            logits = comp.decoder.model(input_ids=torch.tensor([prefix + ids])).logits[0]
            expected.append(_probes(ids, _surprisal(logits[len(prefix):len(prefix) + len(ids) - 1], ids)))
        cache = DynamicCache(config=comp.decoder.model.config)
        for i, (k, v) in enumerate(comp._prefix_cache()):
            cache.update(k, v, i)
        alone, _ = comp._score_window([], windows[0], 0, 0, cache, repeat_ids)
        together = comp._score_rows(windows, repeat_ids)
    assert len(expected[0]) > 1 and alone.check.probes == expected[0]
    assert [w.check.probes for w in together] == expected


def test_a_memory_passes_only_if_its_probes_pass_too(monkeypatch):
    import icae_rag.compressors.kvzip.check as check
    import icae_rag.compressors.kvzip.scoring as scoring

    def budget() -> tuple[float, float]:
        comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.6, storage="float32")
        memory = comp.compress(TEXT)
        return float(memory.metadata["kvzip_ratio"]), float(memory.metadata["kvzip_fidelity"])

    with monkeypatch.context() as m:
        m.setattr(scoring, "_probes", lambda ids, surprisal: [])
        repeat_only = budget()
    assert repeat_only[0] > 1.5
    with monkeypatch.context() as m:  # probes that always lose: no step passes, everything is kept
        m.setattr(check, "_probe_overlap", lambda reference, got: 0.0)
        assert budget() == (pytest.approx(1.0, rel=1e-3), 1.0)
    with monkeypatch.context() as m:  # probes that never lose: the repeat alone decides
        m.setattr(check, "_probe_overlap", lambda reference, got: 1.0)
        assert budget() == repeat_only


def test_adaptive_memories_record_their_check(tmp_path):
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.5)
    memory = comp.compress(TEXT)
    meta = memory.metadata
    assert set(meta) >= {"kvzip_ratio", "kvzip_fidelity", "kvzip_fidelity_target", "kvzip_check"}
    assert float(meta["kvzip_fidelity"]) >= float(meta["kvzip_fidelity_target"]) == 0.5
    assert float(meta["kvzip_ratio"]) == pytest.approx(memory.compression_ratio, rel=1e-3)
    memory.save(tmp_path / "m.safetensors")
    assert Memory.load(tmp_path / "m.safetensors").metadata == meta
    from icae_rag.compressors.kvzip import budget_summary, memory_budget

    assert memory_budget(memory)["fidelity"] == float(meta["kvzip_fidelity"])
    summary = budget_summary([memory, comp.compress(SECOND)])
    assert summary["memories"] == 2 and summary["fidelity"]["min"] >= 0.5
    fixed = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4).compress(TEXT)
    assert set(fixed.metadata) == {"kvzip_ratio"} and float(fixed.metadata["kvzip_ratio"]) == pytest.approx(4, rel=0.01)
    assert memory_budget(fixed)["fidelity"] is None


@pytest.mark.parametrize("spec", [{"ratio": 4}, {"fidelity": 0.9}])
def test_passages_scored_together_keep_what_each_keeps_alone(spec):
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, storage="float32", window_tokens=64, **spec)
    texts = [TEXT[:40], SECOND, TEXT[:200], "Paris.", SECOND + " " + TEXT[:60], TEXT]  # the last needs two windows
    rows = []
    score_rows = comp._score_rows
    comp._score_rows = lambda windows, repeat: rows.append(len(windows)) or score_rows(windows, repeat)
    together = comp.compress_many(texts, batch_size=8)
    assert rows and max(rows) > 1, "no forward scored several passages"
    for text, batched in zip(texts, together, strict=True):
        alone = comp.compress(text)  # one passage: the per-window path
        assert torch.equal(batched.positions, alone.positions) and torch.equal(batched.counts, alone.counts)
        torch.testing.assert_close(batched.keys, alone.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.values, alone.values, atol=1e-5, rtol=1e-4)
        assert batched.metadata == alone.metadata
    with pytest.raises(InvalidInputError, match="batch_size"):
        comp.compress_many(texts, batch_size=0)


@pytest.mark.parametrize("where", ["apart", "after a lead", "a later window"])
def test_scoring_pass_gives_the_checks_reference(where):
    # The check reads a candidate memory after the text the scoring pass read before the window (its
    # lead, kept whole; nothing for a passage encoded apart), so with every entry kept it reads what
    # the scoring pass read: the scoring pass's distributions over the repeated window are the
    # check's reference at no extra cost.
    from transformers import DynamicCache

    from icae_rag.decoding import prompt_texts

    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.9, storage="float32",
                          window_tokens=16, lead_tokens=8)
    tok, ids, before = comp.decoder.tokenizer, comp.tokenize(TEXT), comp.tokenize(SECOND)[-8:]
    repeat_ids = tok(prompt_texts(tok, "repeat")[1], add_special_tokens=False)["input_ids"]

    def cache(carried=()):
        c = DynamicCache(config=comp.decoder.model.config)
        for i, (k, v) in enumerate(comp._prefix_cache()):
            extra = carried[i] if carried else (k[:, :, :0], v[:, :, :0])
            c.update(torch.cat([k, extra[0]], dim=2), torch.cat([v, extra[1]], dim=2), i)
        return c

    with torch.no_grad():
        if where == "apart":
            window, _ = comp._score_window([], ids[:16], 0, 0, cache(), repeat_ids)
        elif where == "after a lead":
            window, _ = comp._score_window(before, ids[:16], 0, len(before), cache(), repeat_ids)
        else:
            _, carried = comp._score_window([], ids[:16], 0, 0, cache(), repeat_ids)
            window, _ = comp._score_window([], ids[16:32], 16, 0, cache(carried), repeat_ids)
        lead, gap = window.check.lead_keys.shape[2], window.check.offset
        # A later window's lead is the end of the window before: the passage's first 8 tokens are a gap.
        assert (lead, gap) == {"apart": (0, 0), "after a lead": (8, 0), "a later window": (8, 8)}[where]
        everything = _check_memory(window, window.scores.numel(), "sha", comp._provenance())
        assert everything.source_tokens == gap + lead + 16
        assert everything.kept_entries == (lead + 16) * everything.layers * everything.kv_heads
        reread = _repeat_probs(comp, everything, window.ids)
    assert window.check.reference.shape == reread.shape == (16, comp.decoder.model.config.vocab_size)
    assert torch.allclose(window.check.reference, reread, atol=1e-4)


@pytest.mark.parametrize("bad", [dict(fidelity=0), dict(fidelity=1.2), dict(fidelity="high"), dict(fidelity=0.9, ratio=4),
                                 dict(fidelity=0.9, keep_fraction=0.5), dict(ratio=4, keep_fraction=0.5),
                                 dict(stored_ratio=2), dict(read_ratio=0.5), dict(read_ratio="3"), dict(max_ratio=0.5)])
def test_bad_adaptive_settings_are_typed_errors(bad):
    with pytest.raises(ConfigError):
        new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, **bad)


def test_store_keys_memories_by_their_setting(tmp_path):
    store = SqliteMemoryStore(tmp_path / "store")
    loose = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.3)
    strict = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, fidelity=0.9)
    assert loose.version != strict.version != new_compressor("kvzip", device="cpu", decoder=TINY_DECODER).version
    store.get_or_compress([TEXT], loose)
    assert store.get(TEXT, strict) is None and store.get(TEXT, loose) is not None


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("view_kind", ["causal", "positions", "valid"])
def test_fused_attention_equals_the_eager_reference(view_kind, b, monkeypatch):
    # The fused kernels (SDPA, and the one that also gives each row's logsumexp for scores) must
    # read exactly what the eager path reads: same outputs and, when recording, the same scores.
    from types import SimpleNamespace

    from icae_rag.models import kv_attention
    from icae_rag.models.kv_attention import KvView

    torch.manual_seed(0)
    kv_heads, groups, q_len, k_len, dim = 2, 3, 5, 11, 8
    query = torch.randn(b, kv_heads * groups, q_len, dim)
    key, value = torch.randn(b, kv_heads, k_len, dim), torch.randn(b, kv_heads, k_len, dim)
    valid = torch.rand(b, kv_heads, k_len) > 0.3
    valid[..., -q_len:] = True  # a query always reads itself

    def view(record: bool) -> KvView:
        if view_kind == "causal":
            return KvView(record=record, score_columns=(2, 6))
        if view_kind == "positions":
            positions = torch.arange(k_len).expand(b, kv_heads, -1)
            return KvView(valid=[valid], positions=[positions], query_positions=torch.arange(k_len - q_len, k_len)
                          .expand(b, -1), record=record, score_columns=(2, 6))
        return KvView(valid=[valid[..., :k_len - q_len]], record=record)

    layer = SimpleNamespace(layer_idx=0)
    fused_view = view(True)
    fused, _ = kv_attention._attention(layer, query, key, value, None, kv_view=fused_view)
    plain, _ = kv_attention._attention(layer, query, key, value, None, kv_view=view(False))
    monkeypatch.setattr(kv_attention, "_has_lse_kernel", lambda q: False)
    eager_view = view(True)
    eager, _ = kv_attention._attention(layer, query, key, value, None, kv_view=eager_view)
    assert torch.allclose(fused, eager, atol=1e-5) and torch.allclose(plain, eager, atol=1e-5)
    assert fused_view.scores[0].shape == eager_view.scores[0].shape
    assert torch.allclose(fused_view.scores[0], eager_view.scores[0], atol=1e-5)


def test_checks_reuse_the_scoring_pass_prefix(kv_full):
    # The check's prompts start with the prefix the scoring pass already ran: reading it from that
    # pass gives the same distributions as running it again, and a row of another prefix is refused.
    ids = kv_full.tokenize(SECOND)
    memory = kv_full.compress(SECOND)
    with torch.no_grad():
        out = kv_full.decoder.model(input_ids=kv_full._ids(kv_full._prefix_ids()), use_cache=True)
        row = _RowCache.of_text([(layer.keys, layer.values) for layer in output_cache(out).layers])
        again, reused = _repeat_probs(kv_full, memory, ids), _repeat_probs(kv_full, memory, ids, row)
        assert torch.allclose(again, reused, atol=1e-5)
        short = _RowCache.of_text([(layer.keys[:, :, :-1], layer.values[:, :, :-1]) for layer in output_cache(out).layers])
        with pytest.raises(ValueError, match="prefix"):
            _repeat_probs(kv_full, memory, ids, short)


def test_a_memory_read_by_several_questions_is_laid_out_once(kvzip, monkeypatch):
    memory = kvzip.compress(TEXT)
    calls = []
    original = KvMemory.cache_tensors
    monkeypatch.setattr(KvMemory, "cache_tensors", lambda self, *a, **k: calls.append(id(self)) or original(self, *a, **k))
    questions = ["Who stayed in orbit?", "Who walked on the Moon?", "When did it land?"]
    batched = kvzip.answer_many(questions, [[memory]] * 3, max_new_tokens=4)
    assert calls == [id(memory)]
    alone = [kvzip.answer(q, [memory], max_new_tokens=4).text for q in questions]
    assert [a.text for a in batched] == alone


@pytest.mark.parametrize("storage", ["float16", "int4"])
def test_memory_reads_from_bytes_like_from_its_file(tmp_path, kvzip, storage):
    comp = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4, storage=storage)
    memory = comp.compress(TEXT)
    memory.save(tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    from_file, from_bytes = Memory.load(tmp_path / "m.safetensors"), Memory.from_bytes(data, "a table cell")
    assert all(torch.equal(a, b) for a, b in zip(from_file.tensors().values(), from_bytes.tensors().values(), strict=True))
    for bad in (data[:-7], data[:5], b"", data[:200] + bytes([data[200] ^ 1]) + data[201:]):
        with pytest.raises(CorruptFileError, match="a table cell"):
            Memory.from_bytes(bad, "a table cell")
