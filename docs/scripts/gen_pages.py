"""mkdocs-gen-files script: the generated pages (configuration and command-line reference) and the tutorials, which
are the notebooks of ``notebooks/``: rendered as committed (without outputs), or executed first when
``HD_DOCS_EXECUTE=true`` (``make docs``, ``make test``), in which case a cell that raises fails the build."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mkdocs_gen_files
import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_reference  # noqa: E402
import config_reference  # noqa: E402

from hessdistill.config import CONFIG_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = {"quickstart.ipynb": "tutorials/quickstart.ipynb", "compare_runs.ipynb": "tutorials/compare_runs.ipynb"}
EXECUTE = os.environ.get("HD_DOCS_EXECUTE", "").lower() in ("1", "true", "yes")
# The kernels inherit this: the two notebooks run side by side, one thread each (torch's default of one thread per
# core, twice over, made the tiny models' steps many times slower on a 2-core machine)
os.environ.setdefault("OMP_NUM_THREADS", "1")
log = logging.getLogger("mkdocs.plugins.hessdistill")


def notebook(path: Path) -> str:
    """The notebook as the site shows it: executed in a scratch directory when EXECUTE, its stream outputs merged
    (progress bars end as their last state, not one line per update)."""
    nb = nbformat.read(path, as_version=4)
    if EXECUTE:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as cwd:
            NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
        nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
        log.info("executed %s in %.0f s", path.name, time.perf_counter() - start)
    return nbformat.writes(nb)


configs = config_reference.read_configs(CONFIG_DIR)
with mkdocs_gen_files.open("reference/config.md", "w") as page:
    page.write(config_reference.markdown(configs))
mkdocs_gen_files.set_edit_path("reference/config.md", "../docs/scripts/config_reference.py")
log.info("config reference: %d keys have no comment yet", len(config_reference.missing(configs)))

with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_reference.markdown(cli_reference.read_commands(ROOT / "pyproject.toml")))

with ThreadPoolExecutor(len(NOTEBOOKS)) as pool:  # each kernel is a process of its own: they run side by side
    rendered = dict(zip(NOTEBOOKS, pool.map(notebook, [ROOT / "notebooks" / name for name in NOTEBOOKS])))
for name, target in NOTEBOOKS.items():
    with mkdocs_gen_files.open(target, "w") as page:
        page.write(rendered[name])
    mkdocs_gen_files.set_edit_path(target, f"../notebooks/{name}")
