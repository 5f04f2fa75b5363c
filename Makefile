# Captionizer: `make run` starts the whole stack locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := api,worker,cli,dev
# Offline validators of Dockerfiles, compose and Bicep (hadolint, docker compose, checkov,
# shellcheck, the Azure SDK's models). checkov pins many packages, so they get their own venv.
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run system-deps test test-unit test-integration test-infra infra-venv check lint typecheck imports bench bench-e2e train clean-venv gpu-kit gpu-dry-run

# redis-server, Chromium and python3-venv, installed with apt-get when possible; otherwise it stops at
# once with the command to run. Shared with .ci/run.
system-deps:
	scripts/setup-system.sh

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned in the worker extra; pip takes the CPU wheel on this machine's disk.
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

$(INFRA_STAMP): tests/infra/requirements.txt
	test -x $(INFRA_VENV)/bin/python || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install -q --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install -q -r tests/infra/requirements.txt
	touch $(INFRA_STAMP)

infra-venv: $(INFRA_STAMP)

# `make run PORT=8080` serves the API on another port; `make run RESET_WEBHOOK_SECRET=1` signs webhooks
# with a new secret from then on (the secret is kept in .captionizer/ between runs).
PORT ?= 8000
run: $(STAMP)
	$(PY) -m scripts.run_stack --port $(PORT)$(if $(RESET_WEBHOOK_SECRET), --reset-webhook-secret)

# system-deps first: a missing package stops the run in seconds, before the venvs are built.
test: system-deps $(STAMP) $(INFRA_STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: system-deps $(STAMP)
	$(PY) -m pytest tests/integration

test-infra: $(STAMP) $(INFRA_STAMP)
	$(PY) -m pytest tests/infra

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
	$(PY) -m bench.model_throughput

# The whole system (Redis, API, one worker) against the raw model; see bench/README.md.
bench-e2e: $(STAMP)
	$(PY) -m bench.e2e --model git-base --jobs 64 --clients 32 --probe-rate 4 --probe-s 5

# What a lent GPU machine needs beyond its image, in .gpu-kit/ (ignored; carried to the device): docs/gpu.md.
gpu-kit: $(STAMP)
	$(PY) -m bench.gpu_kit --folder .gpu-kit

# bench/gpu.sh's procedure on this CPU: the same pins for this Python in .gpu-kit-cpu/, a clean venv with only
# what the image has, then the script with a tiny model.
gpu-dry-run: gpu-kit
	$(PY) -m bench.gpu_kit --folder .gpu-kit-cpu --python-version 3.11 --like .gpu-kit/manifest.json --image-venv .gpu-kit-cpu/venv
	bench/gpu.sh --dry-run-cpu $(or $(OUT_DIR),.gpu-kit-cpu/out)

clean-venv:
	rm -rf $(VENV) $(INFRA_VENV)
