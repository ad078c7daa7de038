# Two entry points, both idempotent: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Test processes: the suite is sized for two cores (about 6 minutes there).
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed-$(shell cat setup.py | sha1sum | cut -c1-12)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat setup.py | sha1sum | cut -c1-12)

.PHONY: run test lint bench clean install dev system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(STAMP)

install: $(STAMP)
dev: $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/fraudops run

# Headless Chromium for the dashboard test (Debian packages; the test installs nothing).
system-deps:
	command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

test: $(DEV_STAMP) system-deps
	$(BIN)/ruff check --no-cache .
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

lint: $(DEV_STAMP)
	$(BIN)/ruff check --no-cache .

clean:
	rm -rf $(VENV) .fraudops
