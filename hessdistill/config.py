"""Where the Hydra configs live and the resolvers they use.

The configs live at the repository's top level (``conf/``) and ship inside the package as ``hessdistill/conf``
(a link to ``../conf`` in the source tree; copied into the wheel), so every command finds them after a plain
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


def group_choice(group: str, _root_) -> str:
    """The name of the config chosen for ``group`` (``student`` → ``painn_small``), for run names: Hydra's record of
    the choice (the command line, ``hd.compose``); a config composed otherwise: the group's ``name``, else its class
    (``PaiNN`` → ``painn``)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_node = _root_.get("hydra") if "hydra" in _root_ else None
    if hydra_node is None and HydraConfig.initialized():
        hydra_node = HydraConfig.get()
    choice = OmegaConf.select(hydra_node, f"runtime.choices.{group}", default=None) if hydra_node is not None else None
    if choice is not None:
        return str(choice)
    node = _root_[group]
    return str(node.get("name") or str(node.get("_target_", group)).rsplit(".", 1)[-1].lower())


MAX_DIRNAME = 120  # characters: file systems allow 255 per path component; a sweep's folder listing stays readable


def sweep_dirname(name: str, overrides: str = "") -> str:
    """A sweep job's folder name: ``name`` (e.g. ``painn_small-hessian``) and its overrides (``seed=1,rows=2``, Hydra's
    ``job.override_dirname``), with path separators replaced; a longer name is cut and given a hash of the whole, so
    two jobs never share a folder."""
    import hashlib

    whole = f"{name}-{overrides}" if overrides else name
    whole = whole.replace("/", "_").replace("\\", "_")
    if len(whole) <= MAX_DIRNAME:
        return whole
    return f"{whole[:MAX_DIRNAME - 9]}-{hashlib.sha1(whole.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("hd.choice", group_choice, replace=True)
OmegaConf.register_new_resolver("hd.dirname", sweep_dirname, replace=True)


def evaluation_dir(run, checkpoint, split, otherwise: str) -> str:
    """``hessdistill-evaluate``'s folder: inside the training run it evaluates (``evaluation.run_folder``), else
    ``otherwise``."""
    from hessdistill.evaluation.run_folder import evaluation_dir as inside_run

    return str(inside_run(run, checkpoint, split) or otherwise)


OmegaConf.register_new_resolver("hd.evaluation_dir", evaluation_dir, replace=True)
