"""Demo on a real document every Python install has: the language reference's pydoc topics.

Writes a ~2,000-token document about Python's compound statements, then answers the same
question from raw text, from the default kvzip memory (the decoder's own kept keys and values) and
from the shipped ICAE and E2LLM soft prompts, via the CLI.
"""

from __future__ import annotations

import json
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

from icae_rag import DEFAULT_KIND
from icae_rag.compressors import compressor_kinds, shipped_kinds

TOPICS = ("if", "while", "for", "with", "context-managers")
QUESTION = "Which statement is used to wrap the execution of a block with methods defined by a context manager?"


def main() -> None:
    """Write the document, then ask the question with each compressor and print a table."""
    doc = Path("build/demo/python-compound-statements.txt")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n\n".join(pydoc_data.topics.topics[t].strip() for t in TOPICS), encoding="utf-8")
    print(f"document: {doc} (pydoc topics {', '.join(TOPICS)})\nquestion: {QUESTION}\n")
    # The raw-text baseline first, then the default kind and each kind that ships a trained checkpoint.
    for kind in dict.fromkeys([*compressor_kinds(reads_text=True), DEFAULT_KIND, *shipped_kinds()]):
        out = subprocess.run([sys.executable, "-m", "icae_rag.cli", "ask", "--json", "--context", str(doc),
                              "--compressor", kind, QUESTION], capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(f"icae-rag ask --compressor {kind} failed:\n{out.stderr or out.stdout}")
        r = json.loads(out.stdout)
        note = "" if r["trained"] else "  [untrained compressor: expect noise]"
        print(f"{kind:>6}: {r['input_tokens']} tokens -> {r['context_positions']} decoder positions "
              f"(x{r['compression_ratio']}), {r['seconds']} s{note}\n        {r['answer'][:200]!r}")


if __name__ == "__main__":
    main()
