# make demo: set up, then run the whole DAG on the embedded default (CPU, offline, minutes).
# make test: set up, then lint, type-check and the whole test suite.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.shaping-installed

# e.g. make demo REPRO_FLAGS=--force to rebuild every stage
REPRO_FLAGS ?=

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint typecheck pytest params clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro $(REPRO_FLAGS)
	PATH="$(abspath $(BIN)):$$PATH" dvc metrics show --md eval/metrics.json

test: setup lint typecheck pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy src/shaping

pytest: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# Recompose params.yaml from conf/ (what `dvc exp run -S` does), e.g. make params ARGS="lora.r=16"
params: setup
	$(BIN)/python -m shaping.config $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .mypy_cache .ruff_cache
