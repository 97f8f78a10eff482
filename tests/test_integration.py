"""Integration on the embedded default models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import math
import pydoc_data.topics
import re
import subprocess
import sys

import pytest

from icae_rag import load_compressor, new_compressor
from icae_rag.compressors.kvzip import DEFAULT_FIDELITY, DEFAULT_READ_RATIO
from icae_rag.eval.metrics import token_f1

pytestmark = pytest.mark.integration

PARAGRAPH = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football "
    "League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos "
    "defeated the National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their "
    "third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California."
)


@pytest.fixture(scope="module")
def raw():
    return new_compressor("raw", device="cpu")


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    """About 2,000 tokens of the Python language reference (ships with every Python)."""
    text = "\n\n".join(pydoc_data.topics.topics[t].strip() for t in ("if", "while", "for", "with", "context-managers"))
    path = tmp_path_factory.mktemp("doc") / "compound.txt"
    path.write_text(text)
    return path


def test_default_decoder_answers_from_raw_text(raw):
    ans = raw.answer("Where was Super Bowl 50 played?", [PARAGRAPH], max_new_tokens=24)
    assert "Levi's Stadium" in ans.text
    closed_book = raw.answer("Where was Super Bowl 50 played?", ["No context."], max_new_tokens=24)
    assert "Levi's Stadium" not in closed_book.text


def test_default_backbones_are_the_embedded_ones(raw):
    assert raw.decoder.name == "smollm2-135m-instruct" and raw.decoder.hidden_size == 576


def test_default_icae_and_e2llm_ratios(document):
    text = document.read_text()
    icae = load_compressor("icae", device="cpu")
    n = len(icae.tokenize(text))
    assert 1800 <= n <= 2300
    assert icae.compress(text).compression_ratio >= 3.9
    e2llm = load_compressor("e2llm", device="cpu")
    assert e2llm.encoder.dim == 384
    assert e2llm.compress(text).compression_ratio >= 16


def test_default_kvzip_stores_every_entry_and_a_question_reads_a_share(raw):
    kvzip = load_compressor(device="cpu")
    assert kvzip.kind == "kvzip" and kvzip.decoder.name == raw.decoder.name
    memory = kvzip.compress(PARAGRAPH)
    assert memory.compression_ratio == 1.0 and memory.scores is not None
    ans = kvzip.answer("Where was Super Bowl 50 played?", [memory], max_new_tokens=24)
    assert "Levi's Stadium" in ans.text
    assert ans.context_positions == math.ceil(memory.source_tokens / DEFAULT_READ_RATIO)
    # Nothing evicted, stored exactly and read whole: the same greedy tokens as the raw paragraph.
    whole = load_compressor("kvzip:keep_fraction=1.0,storage=float32", device="cpu")
    question = "Which team won Super Bowl 50?"
    assert whole.answer(question, [whole.compress(PARAGRAPH)], max_new_tokens=16).token_ids == raw.answer(
        question, [PARAGRAPH], max_new_tokens=16).token_ids


def test_adaptive_kvzip_sizes_each_memory_by_its_check():
    kvzip = load_compressor(f"kvzip:fidelity={DEFAULT_FIDELITY}", device="cpu")
    memory = kvzip.compress(PARAGRAPH)
    assert float(memory.metadata["kvzip_fidelity"]) >= DEFAULT_FIDELITY and memory.compression_ratio >= 1.5
    assert float(memory.metadata["kvzip_ratio"]) == pytest.approx(memory.compression_ratio, rel=1e-3)
    ans = kvzip.answer("Where was Super Bowl 50 played?", [memory], max_new_tokens=24)
    assert "Levi's Stadium" in ans.text and ans.context_positions == memory.num_positions
    # Text the decoder can restate from a few entries gets a small memory; stricter fidelity, a larger one.
    redundant = kvzip.compress("The meeting is on Monday. " * 24)
    assert redundant.compression_ratio >= 8 > memory.compression_ratio
    strict = load_compressor("kvzip:fidelity=0.995", device="cpu").compress(PARAGRAPH)
    assert strict.compression_ratio < memory.compression_ratio
    # The decoder restates rather than copies (it may drop a clause), so measure overlap, not equality.
    assert token_f1(kvzip.reconstruct(memory), (PARAGRAPH,)) >= 0.5


@pytest.mark.parametrize("kind,min_ratio", [("raw", 1.0), ("kvzip:ratio=4", 3.9), ("icae", 3.9), ("e2llm", 16)])
def test_cli_ask_on_a_2000_token_file(document, kind, min_ratio):
    # --whole: the whole ~2,000-token file, not the passages retrieved within the default budget.
    out = subprocess.run([sys.executable, "-m", "icae_rag.cli", "ask", "--json", "--context", str(document),
                          "--whole", "--compressor", kind, "--max-new-tokens", "16",
                          "Which statement wraps a block with methods defined by a context manager?"],
                         capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout)
    assert result["compression_ratio"] >= min_ratio
    assert result["input_tokens"] >= 1800 and isinstance(result["answer"], str)
    if kind == "raw":
        assert result["context_positions"] == result["input_tokens"]


# An exact fact (a default, after rsync(1)'s --timeout) and five paragraphs of other tools' options to
# read it among; the question asks for the fact, and raw text answers it read among them.
FACT = ("The --timeout option sets the maximum I/O timeout in seconds. If no data is transferred for the "
        "specified time then rsync will exit. The default is 0, which means no timeout. The --contimeout "
        "option sets the amount of time rsync waits for its connection to a daemon to succeed.")
FACT_QUESTION, FACT_ANSWER = "What is the default value of rsync's --timeout option?", "0"
DISTRACTORS = (
    "The --long option enables long distance matching with a window of 2^27 bytes. It raises the memory needed "
    "to decompress the file. The window size can be given as --long=windowLog; the largest value accepted is 31. "
    "Long distance matching helps most on large files that repeat content far apart.",
    "Compression is always performed, even if the compressed file is slightly larger than the original. The "
    "worst case expansion is a few bytes for the gzip file header, plus 5 bytes every 32K block, or an expansion "
    "ratio of 0.015% for large files. gzip preserves the mode, ownership and timestamps of files.",
    "The -j option specifies the number of jobs (commands) to run simultaneously. If there is more than one -j "
    "option, the last one is effective. If the -j option is given without an argument, make will not limit the "
    "number of jobs that can run simultaneously. The -l option stops new jobs while the load average is at least "
    "the given number.",
    "The -c option sets the number of octets per line, 16 by default. The maximum is 256. With -p, the default is "
    "30 octets per line, and with -i it is 12. The -g option separates the output of every given number of bytes "
    "by a whitespace, 2 by default.",
    "bzip2 compresses files using the Burrows-Wheeler block sorting text compression algorithm and Huffman coding. "
    "The block size can be set with the flags -1 to -9, which give block sizes of 100k to 900k. Decompression "
    "needs about 3700 kbytes of memory for the largest block size.",
)


def says_fact(answer) -> bool:
    """Whether an answer gives the planted default, 0, as a number of its own (not inside 30 or 30000)."""
    return re.search(rf"(?<![\d.]){FACT_ANSWER}(?![\d])", answer.text) is not None


def test_the_check_keeps_more_of_a_memory_that_loses_a_fact_among_others(raw, monkeypatch):
    import icae_rag.compressors.kvzip.scoring as scoring
    from icae_rag.compressors.kvzip import CHECK

    assert says_fact(raw.answer(FACT_QUESTION, [*DISTRACTORS, FACT], max_new_tokens=24))
    kvzip = load_compressor(f"kvzip:fidelity={DEFAULT_FIDELITY}", device="cpu")
    with monkeypatch.context() as m:  # the check without its look-up probes: the repeat alone
        m.setattr(scoring, "_probes", lambda ids, surprisal: [])
        *others, repeat_only = kvzip.compress_many([*DISTRACTORS, FACT])
    # That memory passes its check and answers read alone, but not read after the other memories.
    assert float(repeat_only.metadata["kvzip_fidelity"]) >= DEFAULT_FIDELITY
    assert says_fact(kvzip.answer(FACT_QUESTION, [repeat_only], max_new_tokens=24))
    assert not says_fact(kvzip.answer(FACT_QUESTION, [*others, repeat_only], max_new_tokens=24))
    # The check with its probes keeps more of it. (Among all five others even memories with nothing
    # evicted answer 30 here, the gap between passages encoded apart and read together; the read
    # budget's test below picks a company that nothing evicted answers.)
    memory = kvzip.compress(FACT)
    assert memory.metadata["kvzip_check"] == CHECK and float(memory.metadata["kvzip_fidelity"]) >= DEFAULT_FIDELITY
    assert memory.compression_ratio < repeat_only.compression_ratio


def test_a_fact_lost_after_another_memory_is_answered_under_the_read_budget():
    kvzip = load_compressor(device="cpu")
    whole = load_compressor("kvzip:keep_fraction=1.0", device="cpu")
    other, fact = kvzip.compress_many([DISTRACTORS[2], FACT])
    assert says_fact(whole.answer(FACT_QUESTION, [other, fact], max_new_tokens=24))  # nothing evicted answers
    # Each memory cut alone to the default's ratio by its stored scores: the fact's memory answers read
    # alone, and loses the fact read after the other one.
    alone = [m.pruned(round(m.kept_entries / DEFAULT_READ_RATIO)) for m in (other, fact)]
    assert says_fact(whole.answer(FACT_QUESTION, alone[1:], max_new_tokens=24))
    assert not says_fact(whole.answer(FACT_QUESTION, alone, max_new_tokens=24))
    # The read budget, the same share of both together, gives the fact's memory more, and answers.
    read = kvzip.budget_contexts([other, fact], question=FACT_QUESTION)
    assert sum(m.kept_entries for m in read) == round((other.kept_entries + fact.kept_entries) / DEFAULT_READ_RATIO)
    assert read[1].kept_entries > alone[1].kept_entries
    assert says_fact(kvzip.answer(FACT_QUESTION, [other, fact], max_new_tokens=24))


def test_the_question_gives_the_memory_it_needs_a_larger_share_of_the_read_budget():
    kvzip = load_compressor(device="cpu")
    memories = kvzip.compress_many([*DISTRACTORS, FACT])
    read = kvzip.budget_contexts(memories, question=FACT_QUESTION)
    entries = sum(m.kept_entries for m in memories)
    assert sum(m.kept_entries for m in read) == round(entries / DEFAULT_READ_RATIO)
    *others, fact = read
    # The fact's memory keeps a larger share than the 1/DEFAULT_READ_RATIO every memory keeps read alone, and more
    # than any other memory; without the question (the stored scores alone) it does not stand out.
    assert fact.compression_ratio < 0.85 * DEFAULT_READ_RATIO < min(m.compression_ratio for m in others)
    *_, blind = kvzip.budget_contexts(memories)
    assert blind.compression_ratio > fact.compression_ratio
