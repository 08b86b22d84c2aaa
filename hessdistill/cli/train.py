"""``hessdistill-train``: train a student on a store, undistilled or with Hessian distillation.

    hessdistill-train experiment=demo distill=hessian
    hessdistill-train --multirun experiment=demo weights.hessian=100,400 rows=1,4

The config describes the run: the student, the loss terms (``distill``), the datamodule, optimizer, scheduler,
callbacks and trainer are all Hydra ``_target_`` objects; this command only wires them. Which teacher labels the
run reads follows from what its loss terms declare (``training.terms``), from the store or, with
``teacher_mode=online``, from the teacher during training. ``reference=teacher`` distils without DFT: the
teacher's energies and forces stand in for the reference labels (the subset's structures may have none), so the
energy and force terms and every metric compare against the teacher; ``distill=undistilled`` vs ``distill=hessian``
is then the comparison of a student trained on the teacher's energies and forces alone vs with its Hessian rows too.

Shows a progress bar (epoch, training loss, validation force and energy MAE; one line per epoch when stdout is not a
terminal), logs each λ_KD halving and learning-rate reduction, and ends with a table of the test metrics (units
included) and where the run's files are (``summary.md``).

Writes ``metrics.json`` (test metrics of the EMA weights of ``test_ckpt``: the last checkpoint's, or with
``stopping=early`` the best one's; student and teacher), ``splits.json`` (the exact
split; point ``subset.split_file`` at it to reuse it), ``run_info.json`` (git commit, package versions) and
``config.yaml`` (the resolved config, which ``hessdistill-evaluate run=<dir>`` reads) into the run directory, and,
from the tested checkpoint (``checkpoints/last.ckpt`` or ``best.ckpt``), ``deployed.pt``: the student as a metatomic
model file for ASE, LAMMPS and torch-sim (``deploy.enabled``; ``hessdistill-deploy``), and ``learning_curves.png``
(validation force MAE and training loss per epoch, from the CSV log).
Checkpoints are written to a side file and renamed into place (a full disk never leaves a truncated one) and record
the student as its registry key and plain arguments (``hessdistill.registry``).
``ckpt_path=…/last.ckpt`` resumes a run where it stopped (weights, optimiser, EMA, λ_KD halvings; shuffles and rows
are seeded per epoch), reproducing its curve. The subset's store is built first if it does not exist.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from hessdistill.augment.run import augmented
from hessdistill.config import CONFIG_DIR
from hessdistill.data.labels import OnlineLabels, StoredLabels, TeacherLabels, check_reference, labels_required
from hessdistill.data.store import HessianStore
from hessdistill.data.subset import build_store
from hessdistill.evaluation.checkpoint import check_resumable, load_student
from hessdistill.evaluation.run_folder import RUN_CONFIG, TEST_CHECKPOINTS
from hessdistill.teachers import instantiate_teacher
from hessdistill.training.checkpoint_io import ReplacingCheckpointIO
from hessdistill.training.memory_check import check_training_memory
from hessdistill.training.module import DistillModule
from hessdistill.training.run_summary import summary_table
from hessdistill.training.terms import Loss

log = logging.getLogger(__name__)

TEACHER_MODES = ("precomputed", "online")


def label_source(cfg: DictConfig, loss: Loss) -> TeacherLabels | None:
    """The run's one label source. Online: the teacher itself. Precomputed: the store's labels of the teacher, which
    must be complete when a term compares against a teacher field or the teacher is the reference; otherwise they
    are read when complete (teacher metrics and λ_KD halving) and skipped when not (None)."""
    if cfg.teacher_mode not in TEACHER_MODES:
        raise ValueError(f"teacher_mode must be one of {TEACHER_MODES}, got {cfg.teacher_mode!r}")
    as_reference = cfg.reference == "teacher"
    needed = sorted(field for field in loss.targets if field.startswith("teacher_"))
    if cfg.teacher_mode == "online":
        source = OnlineLabels(instantiate_teacher(cfg.teacher), cfg.teacher_row_strategy, as_reference)
    else:
        name = cfg.teacher.name
        with HessianStore(cfg.subset.store) as store:
            if needed or as_reference:
                store.require_complete(name, f"hessdistill-precompute teacher={name} subset={cfg.subset.name}"
                                             + (" features=true" if "teacher_node_features" in needed else "")
                                             + (" reference=teacher" if as_reference else ""))
            elif not store.is_complete(name):
                return None
        source = StoredLabels(name, node_features="teacher_node_features" in needed, as_reference=as_reference)
    missing = [field for field in needed if field not in source.provides]
    if missing:
        why = (": with reference=teacher the energy and force terms already target the teacher's energy and forces"
               if as_reference else "")
        raise ValueError(f"teacher_mode={cfg.teacher_mode}: the loss terms need {missing}, which this label source "
                         f"does not provide (it provides {sorted(source.provides)}){why}")
    return source


def check_numbers(cfg: DictConfig) -> None:
    """Raise ValueError naming the key unless every loss weight ``weights.<term>`` (λ) is a finite number ≥ 0,
    ``rows`` and ``probes`` integers ≥ 0 and the batch sizes integers ≥ 1: found before Hydra builds the terms and the
    datamodule, whose errors would name only the class."""
    raw = OmegaConf.to_container(cfg.datamodule, resolve=False)
    for field in ("batch_size", "eval_batch_size"):  # named as the user sets it: subset.batch_size, usually
        key = raw[field][2:-1] if str(raw[field]).startswith("${") else f"datamodule.{field}"
        value = cfg.datamodule[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: expected an integer ≥ 1 (structures per batch), e.g. {key}=8")
    counts = {"rows": "Hessian rows per structure", "probes": "probe vectors per structure"}
    for key, value in [*((f"weights.{name}", v) for name, v in cfg.weights.items()),
                       *((key, cfg.get(key, 0)) for key in counts)]:
        whole = key in counts
        number = isinstance(value, int) if whole else isinstance(value, (int, float)) and math.isfinite(value)
        if isinstance(value, bool) or not number or value < 0:
            what = f"an integer ≥ 0 ({counts[key]})" if whole else "a finite number ≥ 0 (a loss weight λ)"
            raise ValueError(f"{key}={value!r}: expected {what}, e.g. {key}={4 if whole else 100}")


def write_run_info(output_dir: Path) -> dict:
    """``run_info.json`` beside Hydra's saved config: git commit (and whether the tree was dirty), package versions,
    host and command line, so every number can be traced to the code that made it."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {}
    for name in ("hessdistill", "torch", "lightning", "torch-geometric", "hydra-core", "numpy", "h5py", "ase",
                 "torchani", "mace-torch", "e3nn", "chgnet", "vesin-torch", "metatomic-torch"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    status = git("status", "--porcelain")
    info = {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None,
            "packages": versions, "python": sys.version.split()[0], "host": platform.node(), "argv": sys.argv}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    return info


def make_callbacks(cfg: DictConfig, output_dir: str) -> list[L.Callback]:
    """The configured callbacks; a checkpoint callback without a dirpath writes into ``<run dir>/checkpoints``; a
    progress bar only where the trainer shows one (``trainer.enable_progress_bar``)."""
    from lightning.pytorch.callbacks import ProgressBar

    out = []
    for config in cfg.callbacks.values():
        extra = {"dirpath": str(Path(output_dir) / "checkpoints")} if "dirpath" in config and config.dirpath is None \
            else {}
        out.append(hydra.utils.instantiate(config, **extra))
    shown = cfg.trainer.get("enable_progress_bar", True)
    return [c for c in out if shown or not isinstance(c, ProgressBar)]


def trainer_plugins(config: DictConfig) -> list:
    """The trainer config's plugins, checkpoints written whole (``ReplacingCheckpointIO``) unless one of them is a
    checkpoint writer of its own."""
    from lightning.pytorch.plugins.io import CheckpointIO

    plugins = [hydra.utils.instantiate(p) for p in config.get("plugins") or []]
    return plugins if any(isinstance(p, CheckpointIO) for p in plugins) else [*plugins, ReplacingCheckpointIO()]


OPTIONAL_LOGGERS = ("wandb", "tensorboard")  # loggers whose package is an extra of the same name


def instantiate_logger(config: DictConfig, output_dir: str):
    """A configured logger writing into ``output_dir`` unless its ``save_dir`` says otherwise; wandb and tensorboard,
    optional dependencies, are named with the extra that installs them when missing."""
    extra = {"save_dir": output_dir} if config.get("save_dir") is None else {}
    try:
        return hydra.utils.instantiate(config, **extra)
    except Exception as exc:  # Hydra wraps the logger's own ModuleNotFoundError
        cause = exc.__cause__ or exc
        name = next((n for n in OPTIONAL_LOGGERS if n in config._target_.lower()), None)
        if name is not None and isinstance(cause, ImportError):
            raise ModuleNotFoundError(f"logger={name} needs {name} ({cause}): pip install 'hessdistill[{name}]'") \
                from exc
        raise


def best_checkpoint(callbacks: list[L.Callback]) -> ModelCheckpoint:
    """The checkpoint callback that keeps the lowest validation loss (the first ``ModelCheckpoint`` with a
    ``monitor``: ``callbacks.best``); ValueError in one line when the run has none (``test_ckpt=best``)."""
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            return callback
    raise ValueError("test_ckpt=best needs a ModelCheckpoint with a monitor among the callbacks (callbacks.best)")


def use_best_weights(module: DistillModule, callback: ModelCheckpoint) -> str:
    """Put the EMA weights of the best checkpoint ``callback`` wrote into ``module``'s student; returns its path."""
    path = callback.best_model_path
    if not path:
        raise ValueError(f"test_ckpt=best: no best checkpoint was written (no validation logged {callback.monitor})")
    module.student.load_state_dict(load_student(path).state_dict())
    return path


def deploy_after_training(checkpoint: str, dtype: str | None) -> str | None:
    """Deploy the run's tested checkpoint into its directory; returns the file, or None after logging a warning (a
    trained student is never lost to a failed deployment: ``hessdistill-deploy checkpoint=…`` can retry)."""
    from hessdistill.cli.deploy import deploy_checkpoint

    try:
        return deploy_checkpoint(checkpoint, dtype=dtype)["path"]
    except Exception as exc:  # noqa: BLE001 (whatever failed, the run's results stand)
        log.warning("could not deploy %s (%s: %s); retry with hessdistill-deploy checkpoint=%s", checkpoint,
                    type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "", checkpoint)
        return None


def write_learning_curves(trainer: L.Trainer, output_dir: str, title: str) -> str | None:
    """``<run dir>/learning_curves.png`` from the run's CSV log (``logger=csv``, ``tensorboard``, ``wandb`` keep one);
    None, with a log line, when there is none or the figure fails (the run's results stand)."""
    from lightning.pytorch.loggers import CSVLogger

    from hessdistill.evaluation.learning_curves import write_learning_curves as write

    logs = [Path(lg.log_dir) / "metrics.csv" for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    if not logs or not logs[0].is_file():
        log.info("no learning curves: the run has no CSV log (add a CSVLogger to logger)")
        return None
    try:
        return str(write(Path(output_dir) / "learning_curves.png", [logs[0]], title))
    except Exception as exc:  # noqa: BLE001 (a figure never costs a trained student)
        log.warning("could not draw the learning curves from %s (%s: %s)", logs[0], type(exc).__name__, exc)
        return None


def run(cfg: DictConfig, output_dir: str) -> dict:
    started = time.monotonic()
    L.seed_everything(cfg.seed, workers=True)
    check_numbers(cfg)
    test_ckpt = cfg.get("test_ckpt", "last")
    if test_ckpt not in TEST_CHECKPOINTS:
        raise ValueError(f"test_ckpt={test_ckpt!r}: choose one of {', '.join(TEST_CHECKPOINTS)}")
    with HessianStore(build_store(cfg.subset, require_labels=labels_required(cfg.reference))) as store:
        check_reference(cfg.reference, store)
    module = DistillModule(student=cfg.student, terms=cfg.distill.terms, plugins=cfg.distill.get("plugins"),
                           optimizer=cfg.optimizer, scheduler=cfg.scheduler, row_strategy=cfg.row_strategy,
                           compile=cfg.compile)
    labels = label_source(cfg, module.loss)
    dm = hydra.utils.instantiate(cfg.datamodule, labels=labels, rows=module.loss.rows, probes=module.loss.probes)
    for path in [*augmented(cfg, dm), *cfg.get("added_stores", [])]:  # after the split: only training structures
        dm.add_training_store(path, cfg.teacher_energy)
    empty = [name for name in ("train", "val") if len(dm.splits[name]) == 0]
    if empty:  # found now, not after a full epoch: the scheduler and the checkpoints watch val/loss_ef
        raise ValueError(f"{cfg.subset.store}: subset.split={list(cfg.subset.split)} leaves the {' and '.join(empty)} "
                         f"split of its {len(dm.store)} structures empty")
    main_process = rank_zero_only.rank == 0  # under DDP every rank runs this function; one writes the files
    if main_process:
        dm.write_split_file(Path(output_dir) / "splits.json")
    module.prepare(dm)
    if cfg.get("ckpt_path"):
        check_resumable(cfg.ckpt_path, module)
    loggers = [instantiate_logger(c, output_dir) for c in cfg.logger]
    callbacks = make_callbacks(cfg, output_dir)
    best = best_checkpoint(callbacks) if test_ckpt == "best" else None
    # validation and test need forces and Hessian rows (autograd), which inference mode forbids
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=callbacks,
                                      plugins=trainer_plugins(cfg.trainer), default_root_dir=output_dir,
                                      inference_mode=False)
    if cfg.memory_check:  # refused now, not by the kernel's OOM killer mid-epoch
        check_training_memory(module, dm, trainer.strategy.root_device, cfg.memory_warn_gib)
    if main_process:
        write_run_info(Path(output_dir))
        OmegaConf.save(cfg, Path(output_dir) / RUN_CONFIG, resolve=True)
    # weights only: a resumed checkpoint is data (check_resumable read it so first; this holds if it was swapped since)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    checkpoint = str(Path(output_dir) / "checkpoints" / "last.ckpt")
    if best is not None:  # after fit the module holds the last EMA weights
        checkpoint = use_best_weights(module, best)
    result = {"run_name": cfg.run_name, "distill": cfg.distill.name, "teacher": cfg.teacher.name,
              "reference": cfg.reference,
              "epochs": trainer.current_epoch, "run_dir": str(output_dir), "test_ckpt": test_ckpt,
              "checkpoint": checkpoint,
              "final_weights": {name: module.loss.weight(name) for name in module.loss.terms}}
    if cfg.test:
        (test,) = trainer.test(module, datamodule=dm, verbose=False)
        result["test"] = {k: float(v) for k, v in test.items()}
    if trainer.is_global_zero:
        if cfg.deploy.enabled:
            result["deployed"] = deploy_after_training(result["checkpoint"], cfg.deploy.dtype)
        result["learning_curves"] = write_learning_curves(trainer, output_dir, cfg.run_name)
        result["wall_time_s"] = time.monotonic() - started
        Path(output_dir, "metrics.json").write_text(json.dumps(result, indent=2))
        Path(output_dir, "summary.md").write_text(summary_table(result) + "\n")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    result = run(cfg, HydraConfig.get().runtime.output_dir)
    if "wall_time_s" in result:  # the process that wrote the run's files
        log.info("\n%s", summary_table(result))


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("train")
