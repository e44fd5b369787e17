# Set-up and the two everyday commands. Each target creates or refreshes
# .venv in the project root, installs crmbet with pinned dependencies, and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.crmbet-installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,report]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/crmbet demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/run.py all --json benchmarks/results/all.json

clean:
	rm -rf .crmbet .pytest_cache .hypothesis
