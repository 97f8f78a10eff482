"""Answering: prompt layout, batching = one by one, streaming = answer, stop strings, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TEXT
from icae_rag.decoding import (
    GenerationConfig,
    build_prompt,
    generate_from_prompts,
    reconstruct_token_ids,
    stop_token_ids,
)
from icae_rag.decoding.generate import _NgramBan
from icae_rag.errors import InvalidInputError
from icae_rag.memories.soft_prompt import SoftPrompt
from icae_rag.models.hf_compat import cache_arg, output_cache


def test_answer_reports_positions_and_ratio(tiny_compressor):
    contexts = [TEXT] if tiny_compressor.kind == "raw" else [tiny_compressor.compress(TEXT)]
    ans = tiny_compressor.answer("When did Apollo 11 land?", contexts, max_new_tokens=5)
    assert 1 <= ans.new_tokens <= 5 and ans.new_tokens == len(ans.token_ids)
    assert ans.text == tiny_compressor.decoder.tokenizer.decode(ans.token_ids, skip_special_tokens=True).strip()
    assert ans.source_tokens == len(tiny_compressor.tokenize(TEXT))
    assert ans.input_positions > ans.context_positions
    if tiny_compressor.kind == "raw":
        assert ans.compression_ratio == 1.0
    else:
        assert ans.compression_ratio > 2


def test_raw_text_and_raw_soft_prompt_are_the_same_input(tiny_raw):
    as_text = build_prompt(tiny_raw, [TEXT], question="Who?")
    as_prompt = build_prompt(tiny_raw, [tiny_raw.compress(TEXT)], question="Who?")
    assert torch.equal(as_text.embeddings, as_prompt.embeddings)


def test_contexts_are_separated_and_all_kept(tiny_icae):
    one = build_prompt(tiny_icae, [tiny_icae.compress(TEXT)], question="Q?")
    two = build_prompt(tiny_icae, [tiny_icae.compress(TEXT), "raw passage"], question="Q?")
    sep = tiny_icae.decoder.embed_text("\n\n").shape[0]
    raw = tiny_icae.decoder.embed_text("raw passage").shape[0]
    assert two.embeddings.shape[0] == one.embeddings.shape[0] + sep + raw
    assert two.source_tokens == one.source_tokens + raw


def test_batch_equals_one_by_one(tiny_raw):
    questions = ["When did Apollo 11 land?", "Who stayed in orbit?", "How much did it cost in total?"]
    contexts = [[TEXT], [TEXT[:120]], ["The program cost 25 billion dollars."]]
    batched = tiny_raw.answer_many(questions, contexts, max_new_tokens=6)
    for q, c, b in zip(questions, contexts, batched, strict=True):
        single = tiny_raw.answer(q, c, max_new_tokens=6)
        assert single.token_ids == b.token_ids


def test_stream_yields_the_answer_in_pieces(tiny_raw):
    full = tiny_raw.answer("When did Apollo 11 land?", [TEXT], max_new_tokens=8)
    pieces = list(tiny_raw.stream("When did Apollo 11 land?", [TEXT], max_new_tokens=8))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == full.text


def test_sampling_follows_seed_temperature_and_top_p(tiny_raw):
    def ids(**options) -> list[int]:
        return tiny_raw.answer("Who?", [TEXT], max_new_tokens=6, **options).token_ids

    greedy = ids()
    hot = dict(do_sample=True, temperature=5.0, top_p=1.0)  # near-uniform over the vocabulary
    assert ids(seed=3, **hot) == ids(seed=3, **hot), "the same seed gives the same answer"
    draws = {tuple(ids(seed=seed, **hot)) for seed in range(4)}
    assert len(draws) == 4, "each seed draws its own answer"
    assert tuple(greedy) not in draws, "sampling is not the greedy choice"
    # A temperature near 0 or a top_p keeping only the likeliest token leaves nothing to draw: greedy.
    for seed in range(3):
        assert ids(seed=seed, do_sample=True, temperature=1e-3, top_p=1.0) == greedy
        assert ids(seed=seed, do_sample=True, temperature=5.0, top_p=1e-6) == greedy


def test_stop_string_cuts_the_answer(tiny_raw):
    full = tiny_raw.answer("Who?", [TEXT], max_new_tokens=8)
    assert len(full.text) > 2
    stop = full.text[len(full.text) // 2:]
    cut = tiny_raw.answer("Who?", [TEXT], max_new_tokens=8, stop=(stop,))
    assert cut.text == full.text[: len(full.text) // 2].strip()


def test_reconstruct_decodes_each_piece_alone_in_autoencode_mode(tiny_icae):
    # reconstruct = greedy autoencoding of each piece's own soft prompt (batched), ids joined, then decoded.
    prompt = tiny_icae.compress(TEXT)
    assert len(prompt.pieces) > 1
    tok, stops = tiny_icae.decoder.tokenizer, stop_token_ids(tiny_icae.decoder.tokenizer)
    expected: list[int] = []
    for piece in prompt.pieces:
        rows = prompt.embeddings[piece.position_start:piece.position_end]
        alone = SoftPrompt(rows, (dataclasses.replace(piece, position_start=0, position_end=rows.shape[0]),),
                           prompt.compressor, prompt.compressor_version, prompt.backbone)
        with torch.no_grad():
            built = build_prompt(tiny_icae, [alone], mode="autoencode")
        cfg = GenerationConfig(max_new_tokens=4, no_repeat_ngram_size=0)
        expected += [t for t in generate_from_prompts(tiny_icae, [built], cfg)[0].token_ids if t not in stops]
    assert expected and reconstruct_token_ids(tiny_icae, prompt, max_new_tokens=4, batch_size=2) == expected
    assert tiny_icae.reconstruct(prompt, max_new_tokens=4) == tok.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("question", ["", "  ", None, 3])
def test_bad_question(tiny_raw, question):
    with pytest.raises(InvalidInputError):
        tiny_raw.answer(question, [TEXT])


def test_bad_contexts_and_options(tiny_raw):
    with pytest.raises(InvalidInputError, match="list"):
        tiny_raw.answer("Who?", TEXT)
    with pytest.raises(InvalidInputError):
        tiny_raw.answer("Who?", [b"bytes"])
    with pytest.raises(InvalidInputError, match="valid generation options"):
        tiny_raw.answer("Who?", [TEXT], max_tokens=3)
    with pytest.raises(InvalidInputError):
        tiny_raw.answer("Who?", [TEXT], max_new_tokens=0)
    with pytest.raises(InvalidInputError, match="one list per question"):
        tiny_raw.answer_many(["a?", "b?"], [[TEXT]])


def _repeated_ngram(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_ngram_ban_breaks_a_greedy_loop():
    # A "model" that always prefers the token after the last one in the cycle 0 1 2 3 0 1 2 3 ...
    ban, ids = _NgramBan(rows=1, n=4), []
    for step in range(12):
        logits = torch.zeros(1, 10)
        logits[0, step % 4] = 2.0
        logits[0, 9] = 1.0  # the runner-up
        tok = int(ban.mask(logits).argmax(-1))
        ban.add([tok], [False])
        ids.append(tok)
    assert ids[:7] == [0, 1, 2, 3, 0, 1, 2]  # new 4-grams may share 3 tokens with old ones...
    assert ids[7] == 9  # ...but "0 1 2" may not be followed by 3 again: the runner-up comes instead
    assert not _repeated_ngram(ids, 4)


def test_ngram_ban_skips_finished_rows():
    ban = _NgramBan(rows=2, n=2)
    ban.add([5, 5], [False, True])
    ban.add([6, 6], [False, True])
    assert ban.history == [[5, 6], []]


def test_loop_stop_is_on_by_default_and_can_be_turned_off(tiny_raw):
    default = tiny_raw.answer("Who?", [TEXT], max_new_tokens=40)
    assert default.token_ids == tiny_raw.answer("Who?", [TEXT], max_new_tokens=40, no_repeat_ngram_size=4).token_ids
    assert not _repeated_ngram(default.token_ids, 4)
    one = tiny_raw.answer("Who?", [TEXT], max_new_tokens=40, no_repeat_ngram_size=1)
    assert len(set(one.token_ids)) == len(one.token_ids)
    off = tiny_raw.answer("Who?", [TEXT], max_new_tokens=40, no_repeat_ngram_size=0)
    assert off.new_tokens == 40


def test_loop_stop_in_a_batch_equals_one_by_one(tiny_raw):
    questions, contexts = ["Who?", "When did Apollo 11 land?"], [[TEXT], [TEXT[:120]]]
    batched = tiny_raw.answer_many(questions, contexts, max_new_tokens=30, no_repeat_ngram_size=3)
    for q, c, b in zip(questions, contexts, batched, strict=True):
        assert tiny_raw.answer(q, c, max_new_tokens=30, no_repeat_ngram_size=3).token_ids == b.token_ids


@pytest.mark.parametrize("size", [-1, 2.5, "4", True])
def test_bad_loop_stop_size(tiny_raw, size):
    with pytest.raises(InvalidInputError, match="no_repeat_ngram_size"):
        tiny_raw.answer("Who?", [TEXT], no_repeat_ngram_size=size)


def test_stream_many_streams_every_answer_of_a_batch(tiny_raw):
    questions = ["When did Apollo 11 land?", "Who stayed in orbit?", "How much did it cost?"]
    contexts = [[TEXT], [TEXT[:120]], ["The program cost 25 billion dollars."]]
    answers = tiny_raw.answer_many(questions, contexts, max_new_tokens=8)
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    order = []
    for i, piece in tiny_raw.stream_many(questions, contexts, max_new_tokens=8):
        pieces[i].append(piece)
        order.append(i)
    for i, a in enumerate(answers):
        assert "".join(pieces[i]).strip() == a.text
    # Pieces of different answers interleave: each answer streams from the first step on, not after the others.
    assert order != sorted(order)


def test_stream_many_bad_input(tiny_raw):
    with pytest.raises(InvalidInputError, match="list of questions"):
        next(tiny_raw.stream_many("Who?", [[TEXT]]))
    with pytest.raises(InvalidInputError, match="one list per question"):
        next(tiny_raw.stream_many(["a?", "b?"], [[TEXT]]))


def test_memory_prompts_are_prefilled_together_as_one_by_one():
    from icae_rag import new_compressor
    from icae_rag.decoding.prefill import _prefill
    from icae_rag.models.backbones import TINY_DECODER

    kvzip = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, ratio=4)
    a, b = kvzip.compress(TEXT), kvzip.compress("The Saturn V rocket launched every crewed Apollo mission.")
    prompts = [build_prompt(kvzip, ctx, question=q) for q, ctx in
               [("Who?", [a]), ("Which rocket carried the crew?", [b, "A raw note."]), ("When?", [a, b])]]
    with torch.no_grad(), kvzip.reading():
        together = _prefill(kvzip, prompts)[0]
        alone = torch.cat([_prefill(kvzip, [p])[0] for p in prompts])
    assert torch.allclose(together, alone, atol=1e-4)


@pytest.mark.parametrize("with_memory", [False, True])
def test_target_logits_equal_decoding_the_target_step_by_step(with_memory):
    from icae_rag import new_compressor
    from icae_rag.decoding import target_logits
    from icae_rag.decoding.selection import read_prefill
    from icae_rag.models.backbones import TINY_DECODER

    # Memories read at a budget (the default): the answer's tokens read what the question chose.
    kvzip = new_compressor("kvzip", device="cpu", decoder=TINY_DECODER, keep_fraction=1.0, read_ratio=2)
    contexts = [[kvzip.compress(TEXT)], [kvzip.compress("Short note."), "raw text"]] if with_memory else [[TEXT], ["x"]]
    prompts = [build_prompt(kvzip, ctx, question=q) for ctx, q in zip(contexts, ["When?", "Which rocket?"], strict=True)]
    targets = [[5, 9, 17], [30, 2]]
    assert all(p.read_entries for p in prompts) == with_memory
    got = target_logits(kvzip, prompts, targets)
    model = kvzip.decoder.model
    for prompt, target, lp in zip(prompts, targets, got, strict=True):
        assert lp.shape == (len(target), model.config.vocab_size)
        with torch.no_grad(), kvzip.reading():
            logits, cache, mask, positions, view = read_prefill(kvzip, [prompt])
            steps = [logits.float()[0]]
            for t in target[:-1]:
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
                out = model(inputs_embeds=kvzip.decoder.embed_ids(torch.tensor([[t]])), attention_mask=mask,
                            position_ids=positions, **cache_arg(cache), use_cache=True,
                            **({} if view is None else {"kv_view": view}))
                logits, cache, positions = out.logits[:, -1], output_cache(out), positions + 1
                steps.append(logits.float()[0])
        assert torch.allclose(lp, torch.stack(steps), atol=1e-3)
    with pytest.raises(InvalidInputError, match="non-empty target"):
        target_logits(kvzip, prompts, [[1], []])


def test_every_compressor_is_a_memory_reader(tiny_raw, tiny_icae):
    from icae_rag.decoding import MemoryReader

    members = {n for n in vars(MemoryReader) if not n.startswith("_")}
    assert members == {"decoder", "reading", "prefix_row", "read_entries", "budget_contexts", "check_memory",
                       "mode_embedding"}
    for comp in (tiny_raw, tiny_icae):
        assert all(hasattr(comp, n) for n in members), type(comp).__name__
        with comp.reading():  # ICAE's switches its LoRA off
            assert comp.mode_embedding("answer").shape[-1] == comp.decoder.hidden_size


def test_reconstruct_takes_the_memory_and_warns_on_the_0_1_keyword(tiny_raw):
    memory = tiny_raw.compress(TEXT)
    expected = tiny_raw.reconstruct(memory, max_new_tokens=4)
    assert tiny_raw.reconstruct(memory=memory, max_new_tokens=4) == expected
    with pytest.warns(DeprecationWarning, match=r"pass reconstruct\(memory=\.\.\.\)"):
        assert tiny_raw.reconstruct(soft_prompt=memory, max_new_tokens=4) == expected
    with pytest.raises(TypeError, match="both memory= and soft_prompt="), pytest.warns(DeprecationWarning):
        tiny_raw.reconstruct(memory, soft_prompt=memory)
