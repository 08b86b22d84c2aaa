# Quick start: `make demo` (install + embedded demo), `make test` (install + test suite).
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip

.PHONY: install demo test clean

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

# lint first (ruff, pyproject.toml), then the notebooks run top to bottom in a real kernel (nbmake) beside the tests
test: install
	$(VENV)/bin/ruff check hessdistill tests benchmarks
	$(VENV)/bin/python -m pytest -q --nbmake tests notebooks

clean:
	rm -rf outputs multirun stores lightning_logs .pytest_cache
