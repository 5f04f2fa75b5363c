# Captionizer: `make run` starts the whole stack locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := api,worker,cli,dev

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test test-unit test-integration check lint typecheck imports bench train clean-venv

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned in the worker extra; pip takes the CPU wheel on this machine's disk.
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m scripts.run_stack

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy api shared worker model cli

imports: $(STAMP)
	$(VENV)/bin/lint-imports

check: lint typecheck imports test-unit

train: $(STAMP)
	$(PY) -m model.train

bench: $(STAMP)
	$(PY) bench/model_throughput.py

clean-venv:
	rm -rf $(VENV)
