# Two commands on a fresh machine with Python 3.11 (and Node.js >= 20 for the JS client tests):
#   make serve     # creates .venv, installs torch 2.13.0 + motionserve, starts the server
#   make test      # the whole test suite (what CI runs)
#   make browser   # Debian's chromium, for the playground's browser tests (they skip without it)
#   make fuzz      # schema fuzzing of a real server with many examples (before a release)
# WEIGHTS=tiny make serve  -> tiny random models built locally: no downloads, for offline demos.

PYTHON      ?= python3.11
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.motionserve-installed
WEIGHTS     ?= real
HOST        ?= 127.0.0.1
PORT        ?= 8000
DATA_DIR    ?= ./data
PYTEST_ARGS ?=
# The PyPI torch wheel for Linux is the CUDA build (several GB). Without an NVIDIA driver, take the
# CPU build from PyTorch's index instead; set TORCH_PIP_ARGS yourself to pick another (e.g. cu128).
TORCH_PIP_ARGS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install js browser serve test test-fast fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(STAMP)

tests/e2e/js/node_modules/.package-lock.json: tests/e2e/js/package-lock.json
	cd tests/e2e/js && npm ci --no-audit --no-fund

js: tests/e2e/js/node_modules/.package-lock.json

# Headless Chromium for the playground's browser tests (Debian's package; Playwright drives it, it
# downloads no browser of its own). Needs root (or sudo) for apt-get; skipped when already there.
browser:
	test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }

serve: install
	$(VENV)/bin/motionserve serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR) --weights $(WEIGHTS)

test: install js
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# Everything but the end-to-end tests (which start real server processes).
test-fast: install
	$(PY) -m pytest -q --ignore=tests/e2e $(PYTEST_ARGS)

# Schema fuzzing with many examples (a fresh server without workers, every OpenAPI document, every
# Schemathesis check; `make test` runs the same with a few). The last line printed is a JSON summary.
FUZZ_EXAMPLES ?= 100
fuzz: install
	$(PY) -m tests.e2e.fuzz --max-examples $(FUZZ_EXAMPLES)

bench: install
	$(PY) bench/bench_service.py

clean:
	rm -rf $(VENV) tests/e2e/js/node_modules
