VENV ?= .venv
PY := $(VENV)/bin/python
KVMOPS := $(VENV)/bin/kvmops
GUEST_DIR ?= /var/cache/kvmops/guest
PYTEST_ARGS ?=

.PHONY: setup test unit lint demo bench clean-test

setup:
	bash scripts/setup-host.sh

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

demo: setup
	bash scripts/demo.sh

bench: setup
	$(PY) bench/run_all.py

clean-test:
	$(PY) -m kvmops.testing.cleanup
