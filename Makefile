# Two commands on a fresh machine: `make demo` and `make test`. No Docker, no cloud credentials.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench lint sandbox-up sandbox-down clean cluster-rehearsal

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[local,test]"
	touch $(STAMP)

install: $(STAMP)

## demo: set up, start the local stack, run the nightly pipeline for yesterday, print a summary
demo: $(STAMP)
	$(PY) -m sandbox demo

## test: the whole suite (PostgreSQL tests skip with a message if it is not running; CI requires it)
test: $(STAMP)
	$(PY) -m pytest -q

## lint: ruff over everything, mypy over the product (also run by `make test`, tests/unit/test_lint.py)
lint: $(STAMP)
	$(VENV)/bin/ruff check ingest aggregations sandbox bench tests
	$(VENV)/bin/mypy

## bench: speed and scale figures (minutes; not part of the tests)
bench: $(STAMP)
	$(PY) -m bench.run

sandbox-up: $(STAMP)
	$(PY) -m sandbox up

sandbox-down: $(STAMP)
	$(PY) -m sandbox down

clean: sandbox-down
	rm -rf .sandbox

## cluster-rehearsal: local autoscaling cluster, the README's submit line, a worker node killed (≈2–3 min)
cluster-rehearsal: $(STAMP)
	$(PY) -m sandbox.rehearsal
