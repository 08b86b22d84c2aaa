"""Where the Hydra configs live: the repository's top-level ``conf/`` (the package is installed editable)."""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
