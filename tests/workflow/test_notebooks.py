"""The notebooks are committed clean; ``make test`` runs them top to bottom in a real kernel when it builds the docs
site (``make docs``: mkdocs-jupyter executes them, and a failing cell fails the build), and
``tests/docs/test_site.py`` checks the rendered tutorial's figures and that its student learned."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_the_two_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["compare_runs.ipynb", "quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_valid_and_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
