# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11, pip).
# torch is pinned to the CPU build in the same pip call as everything else, so pip never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) -e '.[dev]'
	$(BIN)/python -m shapeyard.models.tiny  # build and pre-train the embedded tiny model once (under a minute)
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/python -m shapeyard.cli.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check shapeyard tests bench
	$(BIN)/ruff format --check shapeyard tests bench

clean:
	rm -rf $(VENV) build *.egg-info
