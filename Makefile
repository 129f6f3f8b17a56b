# make demo: set up, then run the whole DAG on the embedded default (CPU, offline, minutes) and print a summary.
# make check: set up, then lint, type-check, the layers contract and the tests not marked slow (the fast loop).
# make test: set up, then lint, type-check, the layers contract and the whole test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The exact versions the suite passed with (a pip constraints file); `make lock` refreshes it.
LOCK ?= requirements.lock
BIN := $(VENV)/bin
STAMP := $(VENV)/.shaping-installed

# e.g. make demo REPRO_FLAGS=--force to rebuild every stage
REPRO_FLAGS ?=
# pytest's worker processes (pytest-xdist); 0 runs the tests in pytest's own process
PYTEST_WORKERS ?= 2

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup lock demo check test lint typecheck layers pytest params clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

# Refresh the lock: a fresh venv in a temp dir gets the CPU torch, then this package with its dev extra
# unconstrained (the newest versions pyproject.toml allows); its `pip freeze` becomes $(LOCK) (torch without
# its +cpu tag). Then `make test`, and raise the floors in pyproject.toml to the versions locked.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip && \
	"$$tmp/venv/bin/python" -m pip install --quiet "$(TORCH_SPEC)" && \
	"$$tmp/venv/bin/python" -m pip install --quiet -e ".[dev]" && \
	{ echo "# The exact versions the suite passed with: a pip constraints file, used by \`make setup\`"; \
	  echo "# (pip install -c requirements.lock ...). Refresh with \`make lock\` (see the Makefile), then run \`make test\`."; \
	  echo "# torch is the CPU wheel (2.13.0+cpu here); the constraint carries no local tag, so a CUDA build of 2.13.0 fits too."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > "$$tmp/lock" && mv "$$tmp/lock" $(LOCK)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro $(REPRO_FLAGS)
	$(BIN)/python src/summary.py

check: setup lint typecheck layers
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m "not slow"

# the type check runs beside the suite (about 50 s of one core with a cold cache)
test: setup lint layers
	$(MAKE) --no-print-directory -j2 typecheck pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy src/shaping

# the import layers in .importlinter (import-linter's layers contract)
layers: setup
	$(BIN)/lint-imports

# --durations=15: the slowest tests, where the time budget goes
pytest: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=15

# Recompose params.yaml from conf/ (what `dvc exp run -S` does), e.g. make params ARGS="lora.r=16"
params: setup
	$(BIN)/python -m shaping.config $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .mypy_cache .ruff_cache
