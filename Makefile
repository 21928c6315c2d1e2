# reactive: `make demo` runs the whole system locally, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most of the end-to-end time is waiting on other processes (listeners,
# workers, moto's server), so two share two cores well; each end-to-end test starts half a dozen processes,
# so more than the machine's cores mostly adds contention. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/reactive up

# The suite ensures its own services: moto's server on a free port, Redis at REDIS_URL or a redis-server
# it starts itself (tests/support/services.py); Chromium comes from Debian (.ci/run installs it).
# With TEST_POSTGRES_URL (CI sets it) the in-process tests and the end-to-end runs written for it use
# PostgreSQL; the in-process tests that use the database (django_db) then run once more on SQLite (less
# those of PostgreSQL's own locks). The others do not depend on it: once is enough.
test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)
	@if [ -n "$$TEST_POSTGRES_URL" ]; then \
		echo "again on SQLite: the in-process tests that use the database"; \
		TEST_POSTGRES_URL= $(PY) -m pytest -n $(PYTEST_WORKERS) -m "django_db and not e2e and not browser and not postgres" $(PYTEST_ARGS); \
	fi

test-fast: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not e2e" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy reactive cli

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) bench/save_path.py
	$(PY) bench/pipeline.py
	$(PY) bench/fanout.py
	$(PY) bench/e2e_latency.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
