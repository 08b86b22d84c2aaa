"""The README: short, its links point at files that exist, and its Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 200
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)[^)]*\)", README) if "://" not in t]
    assert targets, "the README links into the docs"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_python_example_runs_as_written(tmp_path):
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(example.strip().splitlines()) <= 15
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    force_mae, energy = re.search(r"([0-9.]+) meV/Å on the test split\n(-?[0-9.]+) eV", done.stdout).groups()
    assert float(force_mae) > 0 and float(energy) < 0   # a molecule's total energy is negative
    assert (tmp_path / "stores" / "demo_hcno.h5").exists()
