# Two commands matter: `make run` (the demo) and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q python3-venv; \
	  else \
	    echo "make: $(PYTHON) cannot create a virtualenv; install python3-venv (apt-get install python3-venv)" >&2; exit 1; \
	  fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' $(PIP_EXTRA)
	@touch $@

## run: the daemon on a built-in demo configuration under ./demo (no root, no MTA)
run: $(STAMP)
	$(BIN)/wrapalert demo --dir demo

## test: the whole test suite
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## lint: ruff and mypy strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

## bench: measurements, written to bench/results/
bench: $(STAMP)
	$(BIN)/python bench/client_startup.py

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
