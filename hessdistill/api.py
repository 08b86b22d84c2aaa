"""The Python API: the commands as functions that return their results, for notebooks and scripts.

    import hessdistill as hd
    hd.precompute("teacher=ani1x", "subset=demo_hcno")
    run = hd.train("trainer.max_epochs=20", experiment="demo", distill="hessian")
    rounds = hd.onpolicy("onpolicy.rounds=2", experiment="demo")    # + the student's MD, labelled where it is wrong
    report = hd.evaluate(run=run["run_dir"])
    hd.predict(checkpoint=run["checkpoint"], input="in.xyz", output="out.xyz")
    atoms.calc = hd.load_calculator(run["checkpoint"], device="auto")
    hd.deploy(checkpoint=run["checkpoint"], target="student.pt")   # training runs also leave run_dir/deployed.pt
    atoms.calc = hd.deployed_calculator("student.pt")

Each function takes the command's choices: Hydra overrides as strings (``"trainer.max_epochs=20"``) and/or config
groups and values as keywords (``experiment="demo"``), or a whole config (``config=hd.compose("train", ...)``,
edited as you like). Paths resolve against the working directory, as on the command line.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from hessdistill.config import CONFIG_DIR
from hessdistill.devices import resolve_device
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.quiet import quiet_dependencies

quiet_dependencies()  # the dependencies' known console noise, silenced as the commands silence it


def compose(command: str, *overrides: str, **choices) -> DictConfig:
    """The config of ``command`` (train, onpolicy, precompute, evaluate, predict) with the given overrides and
    choices."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(command, overrides=[*overrides, *(f"{k}={v}" for k, v in choices.items())])


def _config(command: str, config: DictConfig | None, overrides, choices) -> DictConfig:
    if config is not None and (overrides or choices):
        raise ValueError("pass either config= or overrides and choices, not both")
    return config if config is not None else compose(command, *overrides, **choices)


def _run_dir(kind: str, output_dir: str | Path | None) -> str:
    """The command line's default run directory (outputs/<kind>/<time>) unless one is given."""
    return str(output_dir or Path("outputs") / kind / time.strftime("%Y-%m-%d_%H-%M-%S"))


def precompute(*overrides: str, config: DictConfig | None = None, **choices) -> dict:
    """``hessdistill-precompute``: build the subset's store if missing and label it with the teacher (resumable).
    Returns counts, the worst Hessian asymmetry (eV/Å²) and the batch and chunk sizes used."""
    from hessdistill.cli.precompute import run

    return run(_config("precompute", config, overrides, choices))


def train(*overrides: str, config: DictConfig | None = None, output_dir: str | Path | None = None,
          **choices) -> dict:
    """``hessdistill-train``: returns the run's metrics (test metrics of the EMA student and of the teacher) with
    ``run_dir`` and ``checkpoint`` (its last.ckpt); the run directory holds what the command writes."""
    from hessdistill.cli.train import run

    cfg = _config("train", config, overrides, choices)
    return run(cfg, _run_dir(cfg.run_name, output_dir))


def onpolicy(*overrides: str, config: DictConfig | None = None, output_dir: str | Path | None = None,
             **choices) -> list[dict]:
    """``hessdistill-onpolicy``: a training run, then on-policy rounds (the student's MD, its worst snapshots
    labelled by the teacher and added to training, more training); returns the rounds' log (``rounds.json``). Pass
    the ``output_dir`` of a killed run to resume it."""
    from hessdistill.augment.onpolicy import run_rounds

    cfg = _config("onpolicy", config, overrides, choices)
    return run_rounds(cfg, _run_dir(f"onpolicy/{cfg.run_name}", output_dir))


def evaluate(*overrides: str, config: DictConfig | None = None, output_dir: str | Path | None = None,
             **choices) -> dict:
    """``hessdistill-evaluate`` (e.g. ``run=<training run dir>`` or ``checkpoint=…``): returns every section
    (accuracy, speed, MD, relaxation, spectra) with ``output_dir``, where the tables and figures are written."""
    from hessdistill.cli.evaluate import run

    out = _run_dir("evaluate", output_dir)
    return {**run(_config("evaluate", config, overrides, choices), out), "output_dir": out}


def predict(*overrides: str, config: DictConfig | None = None, **choices) -> dict:
    """``hessdistill-predict`` (``checkpoint=…``, ``input=…``, ``output=…``): writes every frame of the input with
    the student's energy and forces; returns the number of frames and the output path."""
    from hessdistill.cli.predict import run

    return run(_config("predict", config, overrides, choices))


def deploy(*overrides: str, config: DictConfig | None = None, **choices) -> dict:
    """``hessdistill-deploy`` (``checkpoint=…``, ``target=…``): writes the student as a metatomic model file; returns
    its path, force mode, cutoff (Å), species and dtype."""
    from hessdistill.cli.deploy import run

    return run(_config("deploy", config, overrides, choices))


def deployed_calculator(path: str | Path, device: str | None = None, allow_extensions=()):
    """metatomic's ASE calculator of a deployed student file (energy eV, forces eV/Å, stress eV/Å³); a direct-force
    student's forces are its ``non_conservative_force`` output (net force removed, as metatomic-ase does). device: cpu,
    cuda (None: the first the file supports that is available). allow_extensions: names or paths of shared libraries
    the file lists that you trust to run; a file listing any other (not already loaded) is refused."""
    from hessdistill.integrations.deployed_file import load_deployed

    model = load_deployed(path, allow_extensions)
    direct = "non_conservative_force" in model.capabilities().outputs
    from metatomic_ase import MetatomicCalculator

    return MetatomicCalculator(model, device=device, non_conservative="forces" if direct else False)


def load_calculator(checkpoint: str | Path, device: str | torch.device = "auto",
                    dtype: torch.dtype | None = None, allow_unseen_elements: bool = False) -> TorchCalculator:
    """An ASE calculator of a trained student (its EMA weights) on ``device``: energy and per-atom energies (float64
    sums, eV), forces (eV/Å), stress of periodic cells (eV/Å³) and ``get_hessian(atoms)`` (eV/Å²). dtype: the
    student's precision (None: as trained). Structures with elements the student was not trained on are refused
    (``UnseenElementError``, naming them and the checkpoint) unless ``allow_unseen_elements``."""
    return TorchCalculator(load_student(checkpoint, resolve_device(device), dtype, allow_unseen_elements))
