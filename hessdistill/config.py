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


def module_doc(job: str) -> str:
    """``--help``'s description of command ``job`` (train, predict, …): the docstring of ``hessdistill.cli.<job>``,
    read from its source without importing it (the command's heavy imports stay unloaded), in plain text."""
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec(f"hessdistill.cli.{job}")
        doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) if spec else None
    except (ImportError, OSError, SyntaxError, ValueError):
        doc = None
    return (doc or f"hessdistill-{job}").replace("``", "").replace("$", "$$") + "\n"  # $: string.Template's


def help_groups(_root_) -> str:
    """``--help``'s list of the config groups the command composes (Hydra's record of its choices, without Hydra's
    own), each with its options, the chosen one in brackets; empty for a command without groups."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    choices = OmegaConf.select(_root_, "hydra.runtime.choices", default=None) or {}
    groups = sorted(group for group in choices if not group.startswith("hydra"))
    if not groups:
        return ""
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    lines = ["== Config groups: group=option (the current choice in brackets) =="]
    for group in groups:
        options = (loader.get_group_options(group, ObjectType.CONFIG) if loader is not None
                   else sorted(path.stem for path in Path(CONFIG_DIR, group).glob("*.yaml")))
        lines.append(f"{group}: " + ", ".join(f"[{o}]" if o == choices[group] else o for o in options))
    return "\n".join(lines) + "\n\n"


OmegaConf.register_new_resolver("hd.doc", module_doc, replace=True)
OmegaConf.register_new_resolver("hd.help_groups", help_groups, replace=True)
OmegaConf.register_new_resolver("hd.dataset", dataset_path, replace=True)
