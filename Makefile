# The three commands of the README. Each installs what it needs first.
PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
VENV   := .venv
HASTACK := $(VENV)/bin/hastack

.PHONY: up down test unit e2e lint deps bench clean

up: deps
	$(HASTACK) up $(if $(TOPOLOGY),-t $(TOPOLOGY))

down: deps
	$(HASTACK) down

# Unit and site tests on two workers (pytest-xdist): most of their time is spent waiting (the
# servers they start, the timeouts they provoke): 2:16 -> 1:28 on 2 cores.
test: deps lint
	$(VENV)/bin/pytest -q -n 2 tests/unit site/tests
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=0 --durations-min=15 tests/e2e

unit: deps
	$(VENV)/bin/pytest -q -n 2 tests/unit site/tests

lint: deps
	$(VENV)/bin/ruff check src tests bench site

bench: deps
	$(VENV)/bin/python bench/lab_lifecycle.py
	$(HASTACK) up
	$(HASTACK) bench
	$(VENV)/bin/python bench/lb_faults.py
	$(VENV)/bin/python bench/db_tier.py
	$(VENV)/bin/python bench/monitoring_detection.py

deps: $(VENV)/.synced
	@scripts/host-deps.sh

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.5.14

$(VENV)/.synced: $(UV) pyproject.toml uv.lock site/pyproject.toml
	$(UV) sync --frozen --quiet
	touch $@

clean:
	rm -rf $(VENV) $(TOOLS)
