# Quick start: `make demo` (install + embedded demo), `make test` (install + lint + docs + test suite).
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
# MkDocs 1.x prints banners about a future 2.0; mkdocs is pinned below 2 (pyproject.toml)
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true

.PHONY: install demo docs browser test clean

install: $(VENV)/.installed

# torch first: a plain `torch` requirement (pulled by mace-torch) would otherwise fetch a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools<81" wheel
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/hessdistill-demo

# the docs site into site/, strictly (a broken link, anchor or reference fails), the notebooks executed
docs: install
	$(DOCS_ENV) HD_DOCS_EXECUTE=true $(VENV)/bin/mkdocs build --strict --site-dir site

# the browser tests/docs/test_site.py drives: Debian's chromium, installed with apt where we may (CI runs as root)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "$$HD_CHROMIUM" ] || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation; \
	else echo "no chromium and no root apt-get: tests/docs/test_site.py will skip (set HD_CHROMIUM)"; fi

# lint first (ruff, pyproject.toml), then the docs site (which runs the notebooks), then the tests (which open the
# built site in the browser)
test: install browser
	$(VENV)/bin/ruff check hessdistill tests benchmarks docs/scripts
	$(MAKE) docs
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf outputs multirun stores lightning_logs .pytest_cache site
