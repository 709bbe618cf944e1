# nailseg: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install train test lint clean

help:  ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install nailseg with its dev tools

train: $(STAMP)  ## train on the embedded synthetic data set (CPU, offline)
	$(PY) train.py $(ARGS)

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff check and format check
	$(VENV)/bin/ruff check nailseg tests train.py benchmarks experiments
	$(VENV)/bin/ruff format --check nailseg tests train.py benchmarks experiments

clean:  ## remove run outputs and generated data (keeps .venv)
	rm -rf runs data .pytest_cache
