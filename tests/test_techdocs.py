"""The techdocs QA set shipped in icae_rag/data/techdocs: counts, splits, verbatim answers, exclusions,
registration and the loader's typed errors. No data root and no model are needed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from icae_rag.data import TECHDOCS_DIR, LongDocQA, get_dataset, load_dataset, load_techdocs
from icae_rag.errors import DataError, MissingFileError

ROOT = Path(__file__).resolve().parent.parent


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TECHDOCS_DIR / name).read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[LongDocQA]]:
    return {split: load_techdocs(split) for split in ("test", "dev")}


def test_counts_per_split(splits: dict[str, list[LongDocQA]]) -> None:
    test, dev = splits["test"], splits["dev"]
    assert len(test) >= 1600 and len({q.doc_id for q in test}) >= 22
    assert len(dev) >= 250 and len({q.doc_id for q in dev}) >= 9
    # Every shipped question is in exactly one split, and every document has questions.
    assert len(test) + len(dev) == len(_rows("questions.jsonl"))
    assert {q.doc_id for q in test + dev} == {d["doc_id"] for d in _rows("documents.jsonl")}


def test_splits_share_no_document(splits: dict[str, list[LongDocQA]]) -> None:
    test, dev = splits["test"], splits["dev"]
    assert not {q.doc_id for q in test} & {q.doc_id for q in dev}
    assert not {q.document for q in test} & {q.document for q in dev}
    docs = _rows("documents.jsonl")
    assert len({d["text"] for d in docs}) == len(docs)  # no document shipped twice under two ids
    by_split = Counter(d["split"] for d in docs)
    assert by_split["test"] == len({q.doc_id for q in test}) and by_split["dev"] == len({q.doc_id for q in dev})


def test_every_answer_is_verbatim_in_its_document(splits: dict[str, list[LongDocQA]]) -> None:
    texts = {d["doc_id"]: d["text"] for d in _rows("documents.jsonl")}
    ids = [q.id for qs in splits.values() for q in qs]
    assert len(ids) == len(set(ids))
    for q in splits["test"] + splits["dev"]:
        assert q.document == texts[q.doc_id]
        assert 1 <= len(q.answers) <= 4 and q.question.endswith("?")
        for answer in q.answers:
            assert answer in q.document, (q.id, answer)
            assert 1 <= len(answer.split()) <= 6, (q.id, answer)


def test_documents_are_long_but_not_huge() -> None:
    for doc in _rows("documents.jsonl"):
        assert 900 <= len(doc["text"].split()) <= 6500, doc["doc_id"]


_EXCLUDED_TOOLS = re.compile(r"\b(ssh\w*|\w*ssh|scp|sftp|e?grep|fgrep|tar|find|curl|wget|ps|du)\b", re.IGNORECASE)
_EXCLUDED_LICENCES = re.compile(r"apache|GPL-?3|GPLv3|MPL|mozilla|general public license|artistic", re.IGNORECASE)


def test_no_excluded_source() -> None:
    for doc in _rows("documents.jsonl"):
        for key in ("doc_id", "title", "source"):
            assert not _EXCLUDED_TOOLS.search(doc[key]), (doc["doc_id"], key, doc[key])
            assert not _EXCLUDED_LICENCES.search(doc[key]), (doc["doc_id"], key, doc[key])
        # A man page's first line names it, e.g. "GZIP(1) ... GZIP(1)"; no licence text is a document.
        first = doc["text"].split("\n", 1)[0]
        assert not re.match(r"(SSH\w*|SCP|SFTP|E?GREP|FGREP|TAR|FIND|CURL|WGET|PS|DU)\(", first, re.IGNORECASE), first
        for licence_text in ("Apache License", "Mozilla Public License", "GNU GENERAL PUBLIC LICENSE",
                             "TERMS AND CONDITIONS",
                             "GNU LESSER GENERAL PUBLIC LICENSE", "The Artistic License"):
            assert licence_text not in doc["text"], (doc["doc_id"], licence_text)


def test_the_check_above_catches_an_excluded_title() -> None:
    assert _EXCLUDED_TOOLS.search("tar(1) manual page") and _EXCLUDED_TOOLS.search("man 1 ssh_config")
    assert _EXCLUDED_TOOLS.search("wget(1) manual page") and _EXCLUDED_TOOLS.search("man 1 du")
    assert _EXCLUDED_TOOLS.search("zgrep") is None and _EXCLUDED_TOOLS.search("start") is None
    assert _EXCLUDED_TOOLS.search("file(1) manual page: file - determine file type") is None
    assert _EXCLUDED_LICENCES.search("GNU GPL-3.0 licence text")


def test_registered_with_the_right_uses(tmp_path: Path) -> None:
    test, dev = get_dataset("techdocs"), get_dataset("techdocs-dev")
    assert test.records == dev.records == "longqa"
    assert test.uses == get_dataset("covid").uses == frozenset({"bench-qa", "bench-qa-default", "rag"})
    assert dev.uses == frozenset({"bench-qa", "rag"})
    assert "evaluation only" in test.description and "calibration only" in dev.description
    # Shipped data: the data root is ignored, even one that does not exist.
    records = load_dataset("techdocs-dev", root=tmp_path / "no-such-root")
    assert records == load_techdocs("dev")


def test_package_data_and_render_list_cover_the_files() -> None:
    # tomllib is 3.11+ and the package supports 3.10: read icae_rag's package-data line.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1]
    line = next(x for x in section.splitlines() if x.startswith("icae_rag ="))
    assert '"data/techdocs/*"' in line
    from benchmarks.techdocs_render import RENDER

    assert set(RENDER) == {d["doc_id"] for d in _rows("documents.jsonl")}
    assert (TECHDOCS_DIR / "SOURCE.md").is_file()


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "techdocs"
    shutil.copytree(TECHDOCS_DIR, folder)
    return folder


def _rewrite(path: Path, edit) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_a_copy_of_the_files_loads_the_same(tmp_path: Path) -> None:
    assert load_techdocs("test", folder=_copy(tmp_path)) == load_techdocs("test")


def _set(key: str, value):
    def edit(rows: list[dict]) -> None:
        rows[0][key] = value
    return edit


def _drop(key: str):
    def edit(rows: list[dict]) -> None:
        del rows[0][key]
    return edit


@pytest.mark.parametrize(
    ("name", "edit", "pattern"),
    [
        ("questions.jsonl", _set("answers", ["not in the man page at all"]), "do not occur verbatim"),
        ("questions.jsonl", _set("answers", "gzip"), "'answers' must be list"),
        ("questions.jsonl", _set("answers", []), "must not be empty"),
        ("questions.jsonl", _set("doc_id", "man-missing"), "is not in"),
        ("questions.jsonl", _drop("question"), "missing key 'question'"),
        ("questions.jsonl", lambda rows: rows.append(dict(rows[0])), "appears twice"),
        ("documents.jsonl", _set("split", "train"), "split must be 'test' or 'dev'"),
        ("documents.jsonl", _set("text", 42), "'text' must be str"),
        ("documents.jsonl", lambda rows: rows.append(dict(rows[0])), "appears twice"),
    ],
)
def test_malformed_file_is_a_data_error(tmp_path: Path, name: str, edit, pattern: str) -> None:
    folder = _copy(tmp_path)
    _rewrite(folder / name, edit)
    with pytest.raises(DataError, match=pattern) as info:
        load_techdocs("test", folder=folder)
    assert name in str(info.value) and "line" in str(info.value)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    path = folder / "questions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:-1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: invalid JSON"):
        load_techdocs("dev", folder=folder)


def test_missing_file_and_unknown_split(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "documents.jsonl").unlink()
    with pytest.raises(MissingFileError, match="documents.jsonl"):
        load_techdocs("test", folder=folder)
    with pytest.raises(DataError, match="unknown techdocs split 'train'"):
        load_techdocs("train")  # type: ignore[arg-type]


def test_source_md_matches_the_files(splits: dict[str, list[LongDocQA]]) -> None:
    source = (TECHDOCS_DIR / "SOURCE.md").read_text(encoding="utf-8")
    for name in ("documents.jsonl", "questions.jsonl"):
        data = (TECHDOCS_DIR / name).read_bytes()
        assert f"| {name} | {len(data):,} | {hashlib.sha256(data).hexdigest()[:16]} |" in source, name
    per_doc = Counter(q.doc_id for qs in splits.values() for q in qs)
    for doc in _rows("documents.jsonl"):
        row = f"| {doc['doc_id']} | {doc['split']} |"
        line = next(x for x in source.splitlines() if x.startswith(row))
        assert line.endswith(f"| {len(doc['text'].split()):,} | {per_doc[doc['doc_id']]} |"), line
    n = {s: (len({q.doc_id for q in qs}), len(qs)) for s, qs in splits.items()}
    assert (f"`test` {n['test'][0]} documents, {n['test'][1]} questions; "
            f"`dev` {n['dev'][0]} documents, {n['dev'][1]} questions") in " ".join(source.split())
