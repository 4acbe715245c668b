# Conveniences; the README's quick-start commands do the same without make.
PY := .venv/bin/python

.venv:
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'

install: .venv

train: .venv
	$(PY) train.py

test: .venv
	$(PY) -m ruff check . && $(PY) -m pytest

# everything but the tests marked slow (training through train() / fit); CI runs both
test-fast: .venv
	$(PY) -m pytest -m "not slow"

lint: .venv
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: .venv
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

.PHONY: install train test test-fast lint format
