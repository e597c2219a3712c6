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
# Meanwhile `hastack prepare` builds the lab image and the wheelhouses the e2e tests' first
# `up` needs, at idle priority, in its own session so that one kill stops all of it (debootstrap,
# apt, pip) if the unit tests fail or make is interrupted; its output is shown when it is done,
# and the e2e tests start only if it succeeded. One shell: the PID lives across the steps.
test: deps lint
	@log=$$(mktemp); idle=""; \
	if command -v ionice >/dev/null 2>&1; then idle="ionice -c3"; fi; \
	setsid -w nice -n 19 $$idle $(HASTACK) prepare >"$$log" 2>&1 & prep=$$!; \
	trap 'kill -TERM -$$prep 2>/dev/null || kill -TERM $$prep 2>/dev/null; rm -f "$$log"; exit 130' INT TERM; \
	echo "$(VENV)/bin/pytest -q -n 2 tests/unit site/tests  (hastack prepare in the background)"; \
	rc=0; $(VENV)/bin/pytest -q -n 2 tests/unit site/tests || rc=$$?; \
	if [ $$rc -ne 0 ]; then \
	  kill -TERM -$$prep 2>/dev/null || kill -TERM $$prep 2>/dev/null; wait $$prep; \
	  rm -f "$$log"; echo "unit tests failed; hastack prepare stopped" >&2; exit $$rc; \
	fi; \
	prep_rc=0; wait $$prep || prep_rc=$$?; trap - INT TERM; \
	sed 's/^/prepare: /' "$$log"; rm -f "$$log"; \
	if [ $$prep_rc -ne 0 ]; then echo "hastack prepare failed (exit $$prep_rc)" >&2; exit $$prep_rc; fi; \
	echo "$(VENV)/bin/pytest -q -p no:cacheprovider --durations=0 --durations-min=15 tests/e2e"; \
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
