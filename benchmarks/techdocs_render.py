"""Re-render the texts of the techdocs QA set from this machine, to check where they came from.

The shipped `icae_rag/data/techdocs/documents.jsonl` is the source of truth; this script only
repeats the commands that produced its texts (see that folder's SOURCE.md) and compares:

    python -m benchmarks.techdocs_render            # compare every document with the shipped text
    python -m benchmarks.techdocs_render --out DIR  # also write each rendered text to DIR/<doc_id>.txt

A man page is rendered as `LC_ALL=C.UTF-8 MANWIDTH=80 man --nh --nj -P cat <section> <page> | col -bx`
(no hyphenation, no justification, overstrike and tabs removed), then trailing blanks are stripped
from every line and blank lines from both ends. A Python topic is `pydoc_data.topics.topics[<topic>]`
stripped. Other package versions (or another Python) may render slightly different texts; the exit
status is 1 if any document differs or cannot be rendered.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

DOCUMENTS = Path(__file__).resolve().parent.parent / "icae_rag" / "data" / "techdocs" / "documents.jsonl"

# doc_id -> ("man", section, page) or ("pydoc", topic); the shipped file carries split, title, source, licence.
RENDER: dict[str, tuple[str, ...]] = {
    "man-gzip": ("man", "1", "gzip"),
    "man-xargs": ("man", "1", "xargs"),
    "man-make": ("man", "1", "make"),
    "man-bzip2": ("man", "1", "bzip2"),
    "man-zstd": ("man", "1", "zstd"),
    "man-git-commit": ("man", "1", "git-commit"),
    "py-formatstrings": ("pydoc", "formatstrings"),
    "py-string-methods": ("pydoc", "string-methods"),
    "py-typesseq": ("pydoc", "typesseq"),
    "man-sed": ("man", "1", "sed"),
    "man-nm": ("man", "1", "nm"),
    "py-customization": ("pydoc", "customization"),
    "man-patch": ("man", "1", "patch"),
    "man-apt-get": ("man", "8", "apt-get"),
    "man-pg-dump": ("man", "1", "pg_dump"),
    "man-journalctl": ("man", "1", "journalctl"),
    "man-python3": ("man", "1", "python3"),
    "man-xxd": ("man", "1", "xxd"),
    "man-file": ("man", "1", "file"),
    "man-readelf": ("man", "1", "readelf"),
    "man-strace": ("man", "1", "strace"),
    "man-sqlite3": ("man", "1", "sqlite3"),
    "py-debugger": ("pydoc", "debugger"),
    "py-typesmapping": ("pydoc", "typesmapping"),
    "py-strings": ("pydoc", "strings"),
    "man-objdump": ("man", "1", "objdump"),
    "man-flock": ("man", "1", "flock"),
    "py-import": ("pydoc", "import"),
    "man-dpkg": ("man", "1", "dpkg"),
    "man-awk": ("man", "1", "awk"),
    "py-comparisons": ("pydoc", "comparisons"),
}


def _tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def render_man(section: str, page: str) -> str:
    """The man page as plain text, 80 columns wide, without hyphenation, justification or overstrike."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    env.pop("MAN_KEEP_FORMATTING", None)
    man = subprocess.run(["man", "--nh", "--nj", "-P", "cat", section, page], env=env,
                         capture_output=True, check=True)
    col = subprocess.run(["col", "-bx"], input=man.stdout, env=env, capture_output=True, check=True)
    return _tidy(col.stdout.decode("utf-8"))


def render_pydoc(topic: str) -> str:
    """The Python documentation topic as `help()` shows it (from the running Python's pydoc_data)."""
    from pydoc_data.topics import topics

    return topics[topic].strip()


def render(doc_id: str) -> str:
    how = RENDER[doc_id]
    return render_man(how[1], how[2]) if how[0] == "man" else render_pydoc(how[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write each rendered text to OUT/<doc_id>.txt")
    a = p.parse_args(argv)
    shipped = {d["doc_id"]: d for d in map(json.loads, DOCUMENTS.read_text(encoding="utf-8").splitlines()) if d}
    if set(shipped) != set(RENDER):
        print(f"documents differ from the render list: {sorted(set(shipped) ^ set(RENDER))}")
        return 1
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    bad = 0
    print(f"python {sys.version.split()[0]}")
    for doc_id, doc in shipped.items():
        try:
            text = render(doc_id)
        except (subprocess.CalledProcessError, FileNotFoundError, KeyError) as e:
            print(f"{doc_id}: cannot render ({e})")
            bad += 1
            continue
        if a.out:
            (a.out / f"{doc_id}.txt").write_text(text + "\n", encoding="utf-8")
        same = text == doc["text"]
        bad += not same
        print(f"{doc_id}: {'identical' if same else 'DIFFERS'} ({doc['source']}, {len(text.split())} words)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
