"""The Python API: the commands as functions that return their results, for notebooks and scripts.

    import hessdistill as hd
    hd.precompute("teacher=ani1x", "subset=demo_hcno")
    run = hd.train("trainer.max_epochs=20", experiment="demo", distill="hessian")
    rounds = hd.onpolicy("onpolicy.rounds=2", experiment="demo")    # + the student's MD, labelled where it is wrong
    report = hd.evaluate(run=run["run_dir"])                       # into run_dir/evaluation/test: accuracy, speed
    print(hd.summarize("multirun/<time>"))                         # a sweep as one table, mean ± std over seeds
    hd.predict(checkpoint=run["checkpoint"], input="in.xyz", output="out.xyz")
    atoms.calc = hd.load_calculator(run["checkpoint"], device="auto")
    hd.deploy(checkpoint=run["checkpoint"], target="student.pt")   # training runs also leave run_dir/deployed.pt
    atoms.calc = hd.deployed_calculator("student.pt")

Each function takes the command's choices: Hydra overrides as strings (``"trainer.max_epochs=20"``) and/or config
groups and values as keywords (``experiment="demo"``), or a whole config (``config=hd.compose("train", ...)``,
edited as you like). Paths resolve against the working directory, as on the command line. While a command runs,
hessdistill's log lines go to ``<its folder>/<command>.log`` (as the command line's do) and, unless your program set up
logging itself, to stderr.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, open_dict

from hessdistill.config import CONFIG_DIR
from hessdistill.devices import resolve_device
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.quiet import quiet_dependencies

quiet_dependencies()  # the dependencies' known console noise, silenced as the commands silence it


def compose(command: str, *overrides: str, **choices) -> DictConfig:
    """The config of ``command`` (train, onpolicy, precompute, evaluate, predict) with the given overrides and
    choices. Its ``run_name`` (train, onpolicy) is resolved here, where Hydra's record of the chosen configs is at hand
    (``<subset>/<student>-<distill>``, as on the command line)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(command, overrides=[*overrides, *(f"{k}={v}" for k, v in choices.items())],
                            return_hydra_config=True)
    with open_dict(cfg):
        if "run_name" in cfg:
            cfg.run_name = cfg.run_name  # the resolved name (hessdistill.config.group_choice reads cfg.hydra)
        del cfg["hydra"]
    return cfg


def _config(command: str, config: DictConfig | None, overrides, choices) -> DictConfig:
    if config is not None and (overrides or choices):
        raise ValueError("pass either config= or overrides and choices, not both")
    return config if config is not None else compose(command, *overrides, **choices)


def _run_dir(kind: str, output_dir: str | Path | None) -> str:
    """The command line's default run directory (outputs/<kind>/<time>) unless one is given."""
    return str(output_dir or Path("outputs") / kind / time.strftime("%Y-%m-%d_%H-%M-%S"))


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, so both kinds of run log alike


@contextmanager
def _logging_to(folder: str | Path, command: str):
    """hessdistill's (and Lightning's) log lines of INFO and above into ``<folder>/<command>.log`` while the command
    runs, and hessdistill's to stderr too when the program has not set up logging (no root handler)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    ours, lightning = logging.getLogger("hessdistill"), logging.getLogger("lightning.pytorch")
    to_file = logging.FileHandler(Path(folder) / f"{command}.log")
    attached = [(ours, to_file), (lightning, to_file)]
    if not logging.getLogger().handlers:
        attached.append((ours, logging.StreamHandler()))
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    for logger, handler in attached:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, handler in attached:
            logger.removeHandler(handler)
        to_file.close()
        ours.setLevel(level)


def precompute(*overrides: str, config: DictConfig | None = None, **choices) -> dict:
    """``hessdistill-precompute``: build the subset's store if missing and label it with the teacher (resumable).
    Returns counts, the worst Hessian asymmetry (eV/Å²) and the batch and chunk sizes used."""
    from hessdistill.cli.precompute import run

    return run(_config("precompute", config, overrides, choices))


def train(*overrides: str, config: DictConfig | None = None, output_dir: str | Path | None = None,
          **choices) -> dict:
    """``hessdistill-train``: returns the run's metrics (test metrics of the EMA student and of the teacher) with
    ``run_dir`` (default ``outputs/<subset>/<student>-<distill>/<time>``), ``checkpoint`` (its last.ckpt),
    ``deployed``, ``learning_curves`` and ``wall_time_s``; the run directory holds what the command writes. Prints
    the run's table of test metrics (with units) and paths at the end, as the command does."""
    from hessdistill.cli.train import run
    from hessdistill.training.run_summary import summary_table

    cfg = _config("train", config, overrides, choices)
    out = _run_dir(cfg.run_name, output_dir)
    with _logging_to(out, "train"):
        result = run(cfg, out)
    if "wall_time_s" in result:  # the process that wrote the run's files
        print(summary_table(result), flush=True)
    return result


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
    """``hessdistill-evaluate`` (e.g. ``run=<training run dir>`` or ``checkpoint=…``): returns the sections it ran
    with ``output_dir``, where its tables (``metrics.md``, ``metrics.json``) and figures are written: by default
    ``<run>/evaluation/<split>/`` of the training run (outputs/evaluate/<time>/ for a checkpoint outside one).

    By default only the fast sections run: accuracy on the split (energy, force and Hessian-row MAE of student and
    teacher; seconds) and speed (structures/s, student vs teacher; well under a minute). Relaxation, MD and spectra
    take minutes each: ``hd.evaluate(run=…, **{"md.enabled": True, "relax.enabled": True, "spectra.enabled":
    True})``. It logs the sections it is about to run."""
    from hessdistill.cli.evaluate import run
    from hessdistill.evaluation.run_folder import evaluation_dir

    cfg = _config("evaluate", config, overrides, choices)
    out = str(output_dir or evaluation_dir(cfg.run, cfg.checkpoint, cfg.split) or _run_dir("evaluate", None))
    with _logging_to(out, "evaluate"):
        return {**run(cfg, out), "output_dir": out}


def summarize(folder: str | Path, over: tuple[str, ...] = ("seed",)):
    """``hessdistill-summarize``: the training runs under ``folder`` (a multirun folder, or any folder of runs) as one
    table: the settings that differ between runs, the test metrics with units, mean ± sample std over ``over``
    (seeds) and n. ``print()`` it, or display it in Jupyter; ``.groups`` holds the numbers (one dict per setting),
    ``.write_csv(path)`` writes them."""
    from hessdistill.evaluation.sweeps import summarize as summarize_runs

    return summarize_runs(folder, over)


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
