# The README's two commands, each installing what it needs first into a virtual environment in the checkout
# (.venv; activate it afterwards for the `diffuspec` command):
#
#   make quickstart    the main job: `diffuspec quickstart` (ARGS=--fast: the smoke run, CI's)
#   make test          ruff, pytest, then the built wheel's smoke run from a folder outside the checkout
#
# .ci/run runs exactly these two.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip install -q
# The CPU wheel, installed before anything else so that no dependency pulls a CUDA build of torch.
TORCH := torch==2.13.0
# DFlash's reference code, which tests/test_dflash.py compares against; its metadata pins unrelated packages, so
# it goes in without dependencies (it needs only torch and transformers).
DFLASH := dflash==0.1.0
ARGS ?=

.PHONY: install install-dev quickstart test lint pytest wheel-smoke

$(PYTHON):
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip

install: $(PYTHON)
	$(PIP) $(TORCH)
	$(PIP) -e ".[train,eval]"

install-dev: install
	$(PIP) -e ".[train,eval,dev]"
	$(PIP) --no-deps $(DFLASH)

quickstart: install
	$(VENV)/bin/diffuspec quickstart $(ARGS)

test: lint pytest wheel-smoke

lint: install-dev
	$(VENV)/bin/ruff check .

pytest: install-dev
	$(PYTHON) -m pytest -q

# The package as users get it: the wheel with its extras in a fresh environment, the quickstart's smoke preset run
# from a folder outside the checkout (the recipes must come from package data).
wheel-smoke: install
	set -e; dist=$$(mktemp -d); trap 'rm -rf "$$dist"' EXIT; \
	$(PYTHON) -m pip wheel -q --no-deps --wheel-dir "$$dist" .; \
	python3 -m venv "$$dist/venv"; \
	"$$dist/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$dist/venv/bin/python" -m pip install -q $(TORCH); \
	"$$dist/venv/bin/python" -m pip install -q "$$(ls "$$dist"/diffuspec-*.whl)[train,eval]"; \
	cd "$$dist"; "$$dist/venv/bin/diffuspec" quickstart --fast --run-dir "$$dist/run"; \
	test -s "$$dist/run/eval/results.json"
