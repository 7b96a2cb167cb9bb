# Sealwire: `make up` runs the system on embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ./sealwire-data

.PHONY: up test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

up: $(VENV)/.installed
	$(BIN)/sealwire up --data $(DATA)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/crypto.py
	$(BIN)/python bench/mls.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/management.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
