VENV ?= .venv
PY := $(VENV)/bin/python
KVMOPS := $(VENV)/bin/kvmops
GUEST_DIR ?= /var/cache/kvmops/guest
# A fixed shuffled order for CI (repeatable); `make test PYTEST_ARGS=` shuffles anew.
PYTEST_ARGS ?= --randomly-seed=1201

.PHONY: setup test unit lint docs demo bench clean-test

setup:
	bash scripts/setup-host.sh

test: setup docs
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# The documentation site (site/); its reference pages are generated from the code.
docs: setup
	$(VENV)/bin/ruff check scripts/docs_*.py
	$(VENV)/bin/mypy --strict scripts/docs_*.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

demo: setup
	bash scripts/demo.sh

bench: setup
	$(PY) bench/run_all.py

clean-test:
	$(PY) -m kvmops.testing.cleanup
