# The few verbs people type. Everything works on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install test test-postgres test-newest test-oldest lint format clean demo bench chaos

help:
	@echo "make demo    run the example chat site: web, worker, Flower, Redis (Ctrl-C stops all)"
	@echo "make test    run the test suite (installs what is missing)"
	@echo "make test-postgres  the suite on a private PostgreSQL cluster it starts"
	@echo "make test-newest    the end-to-end tests on Python 3.13 + Django 6.1 (nox)"
	@echo "make test-oldest    the end-to-end tests on Python 3.10 + Django 5.2 (nox)"
	@echo "make lint    ruff and mypy"
	@echo "make docs    build the documentation into docs/_build/html (warnings are errors)"
	@echo "make bench   side-by-side benchmarks -> bench/results/ (not part of the tests)"
	@echo "make chaos   10,000 changes through Redis/ASGI restarts and worker kills, both modes;"
	@echo "            checked at the channel layer and on 20 flapping pages that catch up"
	@echo "make format  apply ruff's formatting and fixes"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,lint,example]"
	touch $(STAMP)

install: $(STAMP)
	scripts/system-packages.sh browser
	test ! -f example/package.json || (cd example && npm install --no-audit --no-fund --loglevel=error)
	cd docs/intro/mysite && npm install --no-audit --no-fund --no-package-lock --loglevel=error

demo: install
	scripts/demo.sh

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run.py $(BENCH_ARGS)

chaos: install
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)
	node --test tests/js/

test-postgres: install
	scripts/system-packages.sh postgres
	TURBO_TEST_DATABASE=postgres $(PY) -m pytest $(PYTEST_ARGS)

# The newest and the oldest supported corners, through nox (noxfile.py has every corner).
NEWEST := tests(py3.13-django6.1)
OLDEST := tests(py3.10-django5.2)
E2E := tests/test_end_to_end.py tests/test_delivery.py tests/test_consumer.py \
	tests/test_catch_up.py tests/test_browser.py tests/test_request_context.py \
	tests/test_revocation.py tests/test_refreshes.py tests/test_gaps.py \
	tests/test_receive.py tests/test_churn.py tests/test_pubsub.py tests/test_worker_pools.py \
	tests/test_tutorial.py tests/test_components.py tests/test_status.py tests/test_codec.py \
	tests/test_metrics.py tests/test_tracing.py tests/test_shared_reads.py \
	tests/test_permission_batches.py tests/test_group_changes.py
test-newest: install
	$(VENV)/bin/nox -s "$(NEWEST)" -- $(E2E) $(PYTEST_ARGS)

test-oldest: install
	$(VENV)/bin/nox -s "$(OLDEST)" -- $(E2E) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: docs
docs: $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	$(VENV)/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache *.egg-info
