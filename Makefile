# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv from pyproject.toml + constraints.txt when it is missing or out of date.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3
LINT_PATHS := src tests benchmarks examples

.PHONY: demo test lint typecheck contracts pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,tests]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradguard demo

test: lint typecheck contracts pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

pytest: $(STAMP)
	$(VENV)/bin/pytest -n auto -W error

bench: $(STAMP)
	$(PY) benchmarks/overhead.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
