"""The notebooks run top to bottom (their code cells, in order, in one namespace, from notebooks/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    notebook = json.loads(path.read_text())
    assert all(not c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code"), "commit without outputs"
    monkeypatch.chdir(path.parent)
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
