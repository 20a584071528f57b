# All set-up lives here: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export KERAS_BACKEND ?= jax

.PHONY: run test test-fast bench lint data browser clean

# The package and its runtime dependencies; redone when pyproject.toml changes.
$(BIN)/digitlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(BIN)/digitlab
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

data: $(BIN)/digitlab
	$(BIN)/digitlab data fetch --dataset mnist
	$(BIN)/digitlab data fetch --dataset fashion-mnist || echo "fashion-mnist not fetched: its tests will be skipped"

# Debian's chromium for the browser tests (Playwright's own browser download cannot work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "chromium is missing: sudo apt-get install chromium"; exit 1; fi; }

run: data
	$(BIN)/digitlab train

test: $(VENV)/.dev data browser
	$(BIN)/python -m pytest

# Everything but the tests that train on real MNIST or drive a browser.
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not slow"

bench: $(VENV)/.dev data
	$(BIN)/python benchmarks/seed_pipeline.py

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
