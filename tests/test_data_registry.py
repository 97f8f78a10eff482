"""Tests for icae_rag.data (readers, registry): the real shared data files, plus tiny JSONL files in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from icae_rag.data import (
    SQUAD_HELDOUT_ARTICLES,
    LongDocQA,
    QAExample,
    default_data_root,
    load_covid_qa,
    load_dataset,
    load_jsonl_qa,
    load_jsonl_text,
    load_qmsum,
    load_squad,
    load_squality,
    load_text,
    split_documents,
)
from icae_rag.errors import DataError, InvalidInputError, MissingFileError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root() -> Path:
    # Resolved from the test file, not the working directory, so pytest can run from anywhere.
    env = os.environ.get("ICAE_RAG_DATA")
    path = Path(env) if env else REPO_ROOT / ".." / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"data root {path} does not exist; set ICAE_RAG_DATA to the shared data folder")
    return path.resolve()


@pytest.fixture(scope="module")
def squad(root: Path) -> dict[str, list[QAExample]]:
    return {
        "train-v1.1": load_squad("train", root=root),
        "train-v2.0": load_squad("train", version="v2.0", root=root),
        "heldout": load_squad("heldout", root=root),
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- data root


def test_default_data_root_prefers_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICAE_RAG_DATA", str(tmp_path))
    assert default_data_root() == tmp_path.resolve()


def test_default_data_root_env_missing_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICAE_RAG_DATA", str(tmp_path / "nope"))
    with pytest.raises(MissingFileError, match="ICAE_RAG_DATA"):
        default_data_root()


def test_default_data_root_relative_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ICAE_RAG_DATA", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    assert default_data_root() == (tmp_path / "shared" / "data").resolve()


def test_default_data_root_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ICAE_RAG_DATA", raising=False)
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    with pytest.raises(DataError, match="ICAE_RAG_DATA"):
        default_data_root()


def test_missing_file_under_root_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="dev.jsonl"):
        load_dataset("boolq-dev", root=tmp_path)


# ---------------------------------------------------------------------------- records


def test_records_are_frozen_and_check_answers() -> None:
    ex = QAExample(id="1", context="c", question="q", answers=("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.id = "2"  # type: ignore[misc]
    with pytest.raises(InvalidInputError, match="tuple"):
        QAExample(id="1", context="c", question="q", answers="a")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="tuple"):
        LongDocQA(id="1", document="d", question="q", answers=["a"], doc_id="d")  # type: ignore


# ---------------------------------------------------------------------------- SQuAD


def test_squad_heldout_counts(squad: dict[str, list[QAExample]]) -> None:
    heldout = squad["heldout"]
    assert len(heldout) == 4557
    assert len({ex.context for ex in heldout}) == 856
    assert {ex.title for ex in heldout} == SQUAD_HELDOUT_ARTICLES
    assert len(SQUAD_HELDOUT_ARTICLES) == 13
    assert all(ex.answers for ex in heldout)


def test_squad_train_counts(squad: dict[str, list[QAExample]]) -> None:
    v1, v2 = squad["train-v1.1"], squad["train-v2.0"]
    assert (len(v1), len({ex.context for ex in v1}), len({ex.title for ex in v1})) == (
        6013,
        1211,
        35,
    )
    assert all(ex.answers for ex in v1)
    assert (len(v2), len({ex.context for ex in v2}), len({ex.title for ex in v2})) == (
        11873,
        1204,
        35,
    )
    assert sum(1 for ex in v2 if not ex.answers) == 5945
    assert {ex.title for ex in v1} == {ex.title for ex in v2}


def test_squad_splits_do_not_overlap(squad: dict[str, list[QAExample]]) -> None:
    heldout = squad["heldout"]
    for name in ("train-v1.1", "train-v2.0"):
        train = squad[name]
        assert not {ex.title for ex in train} & SQUAD_HELDOUT_ARTICLES
        assert not {ex.context for ex in train} & {ex.context for ex in heldout}
        assert not {ex.id for ex in train} & {ex.id for ex in heldout}


def test_squad_bad_arguments(root: Path) -> None:
    with pytest.raises(DataError, match="v1.1"):
        load_squad("heldout", version="v2.0", root=root)
    with pytest.raises(DataError, match="split"):
        load_squad("test", root=root)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="version"):
        load_squad("train", version="v3", root=root)  # type: ignore[arg-type]


def _squad_file(titles: list[str]) -> str:
    qa = {"id": "q", "question": "Q?", "answers": [{"text": "a", "answer_start": 0}]}
    data = [{"title": t, "paragraphs": [{"context": f"a {t}", "qas": [qa]}]} for t in titles]
    return json.dumps({"version": "x", "data": data})


def test_squad_leakage_guard(tmp_path: Path) -> None:
    folder = tmp_path / "qa-squad-dev"
    folder.mkdir()
    (folder / "dev-v2.0.reconstructed.json").write_text(_squad_file(["Normans", "Kenya"]))
    with pytest.raises(DataError, match="Kenya"):
        load_squad("train", version="v2.0", root=tmp_path)


def test_squad_unassigned_article_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "qa-squad-dev"
    folder.mkdir()
    (folder / "dev-v2.0.reconstructed.json").write_text(_squad_file(["Normans"]))
    (folder / "dev-v1.1.reconstructed.json").write_text(
        _squad_file(["Normans", "Mystery_article", *sorted(SQUAD_HELDOUT_ARTICLES)])
    )
    with pytest.raises(DataError, match="Mystery_article"):
        load_squad("heldout", root=tmp_path)


# ---------------------------------------------------------------------------- plain text


@pytest.mark.parametrize(
    ("name", "filename"), [("wikitext2-valid", "valid.txt"), ("wikitext2-test", "test.txt")]
)
def test_wikitext_articles(root: Path, name: str, filename: str) -> None:
    docs = load_text(name, root=root)  # type: ignore[arg-type]
    # SOURCE.md counts 64 in test.txt, but 4 of those lines are formula/table rows, not titles.
    assert len(docs) == 60
    assert all(doc.startswith(" \n = ") and not doc.startswith(" \n = = ") for doc in docs)
    raw = (root / "text-wikitext2" / filename).read_text(encoding="utf-8-sig")
    assert "".join(docs) == raw  # nothing lost or altered, <unk> included
    assert any("<unk>" in doc for doc in docs)


def test_gutenberg_books_are_stripped(root: Path) -> None:
    books = load_text("gutenberg", root=root)
    assert len(books) == 9
    for book in books:
        # Only the licence framing goes; "Produced by ... Project Gutenberg volunteer" credits stay.
        assert "PROJECT GUTENBERG EBOOK" not in book.upper()
        assert "END OF THE PROJECT GUTENBERG" not in book.upper()
        assert "PROJECT GUTENBERG LICENSE" not in book.upper()
        assert "\r" not in book and not book.startswith("\ufeff")
        assert len(book.split()) > 25_000
    assert books[0].startswith(
        "ALICE’S ADVENTURES IN WONDERLAND"
    )  # sorted by file name: pg11 first


def test_gutenberg_stripping_rules(tmp_path: Path) -> None:
    folder = tmp_path / "text-gutenberg"
    folder.mkdir()
    framed = (
        "\ufeffThe Project Gutenberg EBook of X\r\n\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\nBody line one.\r\nBody two.\r\n\r\n"
        "End of the Project Gutenberg EBook of X, by\r\nSomeone\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nLicence text\r\n"
    )
    (folder / "pg1_framed.txt").write_text(framed, encoding="utf-8")
    (folder / "pg2_plain.txt").write_text("Just a story.\n", encoding="utf-8")
    assert load_text("gutenberg", root=tmp_path) == ["Body line one.\nBody two.", "Just a story."]


def test_tinyshakespeare(root: Path) -> None:
    (doc,) = load_text("tinyshakespeare", root=root)
    assert len(doc) == 1_115_394 and doc.startswith("First Citizen:")


def test_load_text_unknown_name(root: Path) -> None:
    with pytest.raises(DataError, match="wikitext2-valid"):
        load_text("wikitext103", root=root)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- paragraph QA sets

QA_COUNTS = {
    "nq-open-oracle": (2655, 0),
    "qed-nq-dev": (1355, 0),
    "boolq-dev": (3270, 0),
    "pubmedqa": (1000, 0),
    "clapnq-dev": (600, 300),
    "xquad-en": (1190, 0),
    "hotpotqa": (100, 0),
}


@pytest.mark.parametrize("name", sorted(QA_COUNTS))
def test_qa_set_counts_and_shape(root: Path, name: str) -> None:
    examples = load_dataset(name, root=root)
    total, unanswerable = QA_COUNTS[name]
    assert len(examples) == total
    assert sum(1 for ex in examples if not ex.answers) == unanswerable
    assert len({ex.id for ex in examples}) == total
    for ex in examples:
        assert ex.context.strip() and ex.question.strip()
        assert all(a.strip() for a in ex.answers)


def test_boolq_and_pubmedqa_labels(root: Path) -> None:
    boolq = Counter(ex.answers for ex in load_dataset("boolq-dev", root=root))
    assert boolq == {("yes",): 2033, ("no",): 1237}
    pubmed = Counter(ex.answers for ex in load_dataset("pubmedqa", root=root))
    assert pubmed == {("yes",): 552, ("no",): 338, ("maybe",): 110}


def test_extractive_answers_occur_in_context(root: Path) -> None:
    for name in ("qed-nq-dev", "xquad-en"):
        for ex in load_dataset(name, root=root):
            if name == "xquad-en" or len(ex.answers[0].split(", ")) == 1:
                assert ex.answers[0] in ex.context, (name, ex.id)


def test_xquad_is_a_subset_of_squad_v11(root: Path, squad: dict[str, list[QAExample]]) -> None:
    squad_ids = {ex.id for ex in squad["train-v1.1"] + squad["heldout"]}
    xquad = load_dataset("xquad-en", root=root)
    assert {ex.id for ex in xquad} <= squad_ids
    assert len({ex.context for ex in xquad}) == 240


def test_hotpotqa_context_holds_gold_and_distractors(root: Path) -> None:
    examples = load_dataset("hotpotqa", root=root)
    raw = json.loads(
        (root / "qa-hotpotqa-sample100" / "camera_ready_nd8_dev_sample100.json").read_text()
    )
    n_paragraphs = Counter(ex.context.count("\n\n") + 1 for ex in examples)
    assert n_paragraphs == {10: 97, 4: 1, 5: 1, 2: 1}
    gold_first = 0
    for ex, rec in zip(examples, raw, strict=True):
        assert ex.id == rec["_id"]
        assert f"{rec['title_a']}\n" in ex.context and f"{rec['title_b']}\n" in ex.context
        gold_first += ex.context.startswith(rec["title_a"] + "\n")
    assert gold_first < 50  # gold paragraphs are not always placed first


def test_load_dataset_unknown_name(root: Path) -> None:
    with pytest.raises(DataError, match="nq-open-oracle"):
        load_dataset("squad-v3", root=root)


def test_shipped_file_malformed_record_names_line(tmp_path: Path) -> None:
    good = {"question": "is it", "title": "T", "answer": "True", "passage": "p"}
    bad = {"question": "is it", "title": "T", "answer": "True"}
    write_lines(tmp_path / "qa-boolq-dev" / "dev.jsonl", [json.dumps(good), json.dumps(bad)])
    with pytest.raises(DataError, match=r"line 2: missing key 'passage'"):
        load_dataset("boolq-dev", root=tmp_path)


# ---------------------------------------------------------------------------- long documents


def test_covid_qa(root: Path) -> None:
    examples = load_covid_qa(root=root)
    assert len(examples) == 1380
    assert len({ex.doc_id for ex in examples}) == 98
    assert all(len(ex.answers) == 1 and ex.answers[0] in ex.document for ex in examples)


@pytest.mark.parametrize(
    ("split", "questions", "stories"), [("train", 250, 50), ("dev", 125, 25), ("test", 260, 52)]
)
def test_squality(root: Path, split: str, questions: int, stories: int) -> None:
    examples = load_squality(split, root=root)  # type: ignore[arg-type]
    assert len(examples) == questions
    assert len({ex.doc_id for ex in examples}) == stories
    assert all(len(ex.answers) == 4 and all(ex.answers) for ex in examples)
    assert sum(ex.question == "What is the plot of the story?" for ex in examples) == stories


def test_qmsum(root: Path) -> None:
    counts = {}
    doc_ids: set[str] = set()
    for split in ("train", "val", "test"):
        examples = load_qmsum(split, root=root)  # type: ignore[arg-type]
        counts[split] = (len(examples), len({ex.doc_id for ex in examples}))
        doc_ids |= {ex.doc_id for ex in examples}
        assert len({ex.id for ex in examples}) == len(examples)
    assert counts == {"train": (1257, 162), "val": (272, 35), "test": (281, 35)}
    assert len(doc_ids) == 232  # no meeting appears in two splits


def test_long_split_names_are_checked(root: Path) -> None:
    with pytest.raises(DataError, match="'val'"):
        load_qmsum("dev", root=root)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="'dev'"):
        load_squality("val", root=root)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- user JSONL


def test_load_jsonl_qa_valid(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mine.jsonl",
        [
            json.dumps(
                {"context": "Paris is in France.", "question": "Where?", "answer": "France"}
            ),
            "",
            json.dumps(
                {"id": 7, "context": "c", "question": "q", "answer": ["a", "b"], "extra": 1}
            ),
            json.dumps({"id": "x", "context": "c", "question": "q", "answer": []}),
        ],
    )
    assert load_jsonl_qa(path) == [
        QAExample(
            id="mine-1", context="Paris is in France.", question="Where?", answers=("France",)
        ),
        QAExample(id="7", context="c", question="q", answers=("a", "b")),
        QAExample(id="x", context="c", question="q", answers=()),
    ]


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        (
            ['{"context": "c", "question": "q", "answer": "a"}', '{"context": "c", "answer": "a"}'],
            r"line 2: missing key 'question'",
        ),
        (
            ['{"context": "c", "question": "q", "answer": "a"}', "{not json"],
            r"line 2: invalid JSON",
        ),
        (['{"context": "c", "question": "q", "answer": 3}'], r"line 1: 'answer' must be str/list"),
        (
            ['{"context": "c", "question": "q", "answer": ""}'],
            r"line 1: 'answer' is an empty string",
        ),
        (
            ['{"context": "c", "question": "q", "answer": ["a", 1]}'],
            r"line 1: every item of 'answer'",
        ),
        (
            ['{"context": "", "question": "q", "answer": "a"}'],
            r"line 1: 'context' and 'question' must not be empty",
        ),
        (['["c", "q", "a"]'], r"line 1: expected a JSON object"),
        (
            ['{"id": 1, "context": "c", "question": "q", "answer": "a"}'] * 2,
            r"line 2: id '1' already used on line 1",
        ),
        ([], r"is empty"),
        (["", "   "], r"is empty"),
    ],
)
def test_load_jsonl_qa_errors(tmp_path: Path, lines: list[str], pattern: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=pattern) as info:
        load_jsonl_qa(path)
    assert str(path) in str(info.value)


def test_load_jsonl_qa_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nope.jsonl"):
        load_jsonl_qa(tmp_path / "nope.jsonl")


def test_load_jsonl_text(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl", [json.dumps({"text": "one", "src": "x"}), json.dumps({"text": "two"})]
    )
    assert load_jsonl_text(path) == ["one", "two"]
    write_lines(path, [json.dumps({"text": "one"}), json.dumps({"body": "two"})])
    with pytest.raises(DataError, match=r"line 2: missing key 'text'"):
        load_jsonl_text(path)
    write_lines(path, [json.dumps({"text": " "})])
    with pytest.raises(DataError, match=r"line 1: 'text' is empty"):
        load_jsonl_text(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        load_jsonl_text(path)


# ---------------------------------------------------------------------------- splitting


def test_split_documents_is_stable_across_runs() -> None:
    # Hard-coded: a change here means every recorded train/eval split changed too.
    assert split_documents(list(range(10)), eval_fraction=0.3, seed=0) == (
        [0, 1, 2, 3, 5, 6, 8],
        [4, 7, 9],
    )
    assert split_documents(list(range(10)), eval_fraction=0.3, seed=1) == (
        [0, 1, 2, 3, 5, 6, 9],
        [4, 7, 8],
    )


def test_split_documents_properties() -> None:
    items = [f"doc{i}" for i in range(1000)]
    train, evals = split_documents(items, eval_fraction=0.2, seed=3)
    assert len(evals) == 200 and sorted(train + evals) == sorted(items)
    assert train == [x for x in items if x in set(train)]  # original order kept
    _, bigger = split_documents(items, eval_fraction=0.5, seed=3)
    assert set(evals) <= set(bigger)
    assert split_documents(items, eval_fraction=0.2, seed=4)[1] != evals
    assert split_documents(items, eval_fraction=0.0, seed=3) == (items, [])
    assert split_documents(items, eval_fraction=1.0, seed=3) == ([], items)
    assert split_documents([], eval_fraction=0.5, seed=3) == ([], [])


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True])
def test_split_documents_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(InvalidInputError, match="eval_fraction"):
        split_documents([1, 2], eval_fraction=fraction, seed=0)
