VENV ?= .venv
PY := $(VENV)/bin/python
KVMOPS := $(VENV)/bin/kvmops
GUEST_DIR ?= /var/cache/kvmops/guest
# A fixed shuffled order for CI (repeatable); `make test PYTEST_ARGS=` shuffles anew.
PYTEST_ARGS ?= --randomly-seed=1201
# pytest-xdist workers for `make test` (most tests wait on guests and I/O, not the CPU);
# each test file stays on one worker, the long files (tests/conftest.py LONG_FILES) go
# out first. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: setup test unit lint docs demo bench clean-test

setup:
	bash scripts/setup-host.sh

test: setup docs
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	@# Tests marked serial (they restart libvirtd) run alone after the parallel run;
	@# either run failing fails the target, and both always run.
	status=0; \
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  --durations=40 -m "not serial" $(PYTEST_ARGS) || status=1; \
	$(VENV)/bin/pytest -m serial $(PYTEST_ARGS) || status=1; \
	exit $$status

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
