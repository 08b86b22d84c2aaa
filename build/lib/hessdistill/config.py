"""Where the Hydra configs live and the resolvers they use.

The configs ship inside the package (``hessdistill/conf``), so every command finds them after a plain
``pip install``; add your own config folder with Hydra's ``--config-dir DIR`` (its groups extend ours, e.g.
``DIR/subset/mine.yaml`` → ``subset=mine``). The data sets the configs name ship as package data
(``hessdistill/datasets``) and are named in YAML as ``${hd.dataset:demo/hcno_wb97x_631gd.extxyz}``; every other
path in a config (stores, your data files) is relative to the working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = str(resources.files("hessdistill") / "conf")
DATASETS = Path(str(resources.files("hessdistill") / "datasets"))


def dataset_path(relative: str) -> str:
    """The absolute path of a data set shipped with the package (``hessdistill/datasets/<relative>``)."""
    path = DATASETS / relative
    if not path.is_file():
        raise FileNotFoundError(f"no data set {relative!r} ships with hessdistill (looked for {path})")
    return str(path)


OmegaConf.register_new_resolver("hd.dataset", dataset_path, replace=True)
