# Two commands matter: `make run` (the demo) and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast test-bookworm test-trixie lint check bench clean

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

## test-fast: the unit tests only, in under a minute: no test marked `system` (root, a
## system package, a network or mount namespace, or minutes), on every CPU (pytest-xdist),
## a tenth of each fuzz budget
test-fast: $(STAMP)
	WRAPALERT_FUZZ_SCALE=$${WRAPALERT_FUZZ_SCALE:-0.1} $(BIN)/pytest -m "not system" -n auto $(PYTEST_ARGS)

## lint: ruff and mypy strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

## test-bookworm: the suite on Debian 12's interpreter and library versions (what the .deb runs on)
BOOKWORM := .venv-bookworm
$(BOOKWORM)/.installed: pyproject.toml
	/usr/bin/python3 -m venv $(BOOKWORM)
	$(BOOKWORM)/bin/pip install -q -e '.[test]' aiosmtplib==2.0.0 jinja2==3.1.2 structlog==22.3.0
	@touch $@

test-bookworm: $(BOOKWORM)/.installed
	$(BOOKWORM)/bin/pytest $(PYTEST_ARGS)

## test-trixie: the suite inside a debootstrapped Debian 13 tree, on trixie's python3 3.13
## with its aiosmtplib, jinja2, structlog, pytest and system packages from apt (root,
## network; the tree is made once, a few minutes, and kept in $(TRIXIE_TREE))
TRIXIE_TREE ?= /var/tmp/wrapalert-trixie
test-trixie:
	.ci/trixie-tree $(TRIXIE_TREE) /opt/wrapalert-venv/bin/python -m pytest $(PYTEST_ARGS)

## man: regenerate wrapalert.toml(5) from the config definitions (tests/test_manpage.py
## checks the committed page is up to date)
.PHONY: man
man: $(STAMP)
	$(BIN)/python -m wrapalert.manpage > packaging/man/wrapalert.toml.5

## bench: measurements, written to bench/results/
bench: $(STAMP)
	$(BIN)/python bench/client_startup.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/random_datagrams.py
	$(BIN)/python bench/digest_render.py
	$(BIN)/python bench/fleet_reply.py

clean:
	rm -rf $(VENV) $(BOOKWORM) demo dist .pytest_cache .mypy_cache .ruff_cache

## deb: the Debian package, built from a scratch copy of the tree (packaging/debian as
## debian/), copied to $(DEB_DIST)/ and checked by lintian
DEB_DIST ?= dist
LINTIAN  ?= lintian --fail-on error,warning --display-info
DEB_FILE  = $(DEB_DIST)/wrapalert_$(shell dpkg-parsechangelog -l packaging/debian/changelog -S Version)_all.deb
.PHONY: deb
deb:
	@set -eu; \
	work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	mkdir -p "$$work/src" $(DEB_DIST); \
	: 'tracked and new files, never ignored ones (.venv, caches, build output)'; \
	if git ls-files --error-unmatch pyproject.toml >/dev/null 2>&1; then \
	  git ls-files -z --cached --others --exclude-standard \
	    | tar --null --files-from=- --ignore-failed-read -cf -; \
	else \
	  tar --exclude-vcs --exclude='./.venv*' --exclude=./dist --exclude=./build \
	    --exclude=./demo --exclude='./.*cache' --exclude=./.hypothesis \
	    --exclude=__pycache__ -cf - .; \
	fi | tar -xf - -C "$$work/src"; \
	cp -r "$$work/src/packaging/debian" "$$work/src/debian"; \
	: 'a plain environment: a pyenv or venv python on PATH breaks pybuild'; \
	(cd "$$work/src" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$$HOME" \
	  LC_ALL=C.UTF-8 DEB_BUILD_OPTIONS="$${DEB_BUILD_OPTIONS:-}" \
	  dpkg-buildpackage -us -uc -b); \
	cp "$$work"/*.deb $(DEB_DIST)/
	$(LINTIAN) $(DEB_FILE)
	@echo "deb: $(DEB_FILE)"

## lintian-trixie: trixie's lintian on the package `make deb` built (in the trixie tree of
## test-trixie): the one .deb must be clean on both releases
.PHONY: lintian-trixie
lintian-trixie: deb
	.ci/trixie-tree $(TRIXIE_TREE) $(LINTIAN) $(DEB_FILE)
