"""``hessdistill-train``: train a student on a store, undistilled or with Hessian distillation.

    hessdistill-train experiment=demo distill=hessian
    hessdistill-train --multirun experiment=demo distill.lambda_kd=100,400

Writes ``metrics.json`` (test metrics of the EMA weights, student and teacher), ``splits.json`` (the exact
split; point ``subset.split_file`` at it to reuse it) and ``run_info.json`` (git commit, package versions) into the
run directory, beside Hydra's ``.hydra/config.yaml``. ``ckpt_path=…/last.ckpt`` resumes a run where it stopped
(weights, optimiser, EMA, λ_KD halvings; shuffles and rows are seeded per epoch), reproducing its curve. The subset's store is built first
if it does not exist.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from hessdistill.cli.config_path import CONFIG_DIR
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.store import HessianStore
from hessdistill.data.subset import build_store
from hessdistill.training.callbacks import HalveKDWeight
from hessdistill.training.module import DistillModule

log = logging.getLogger(__name__)


def teacher_for_training(cfg: DictConfig) -> str | None:
    """The teacher whose labels the run reads: required for KD terms, else used (when present) for reference.
    None in online mode, where the teacher itself runs during training."""
    if cfg.teacher_mode == "online":
        return None
    name = cfg.teacher.name
    needs = cfg.distill.rows > 0 or cfg.distill.weights.hessian > 0 or cfg.distill.weights.force_kd > 0 \
        or cfg.distill.weights.get("n2n", 0.0) > 0 or bool(cfg.distill.get("a2a", False))
    store = HessianStore(cfg.subset.store)
    complete = name in store.teachers() and bool(store.teacher_done(name).all())
    store.close()
    if needs and not complete:
        raise FileNotFoundError(f"{cfg.subset.store}: no complete labels from teacher {name!r}; "
                                f"run `hessdistill-precompute teacher={name} subset={cfg.subset.name}` first")
    return name if complete else None


def baseline_inputs(cfg: DictConfig, n2n: bool, a2a: bool) -> dict:
    """What the n2n and a2a baselines read from the store: the teacher's node-feature width and its element
    embeddings (both stored by ``hessdistill-precompute ... features=true``)."""
    if not (n2n or a2a):
        return {}
    if cfg.teacher_mode == "online":
        raise ValueError("the n2n and a2a baselines read teacher features from the store: use teacher_mode=precomputed")
    with HessianStore(cfg.subset.store) as store:
        out = {}
        if n2n:
            out["n2n_features"] = store.node_feature_width(cfg.teacher.name)
        if a2a:
            z, table = store.element_embeddings(cfg.teacher.name)
            out["a2a_embeddings"] = {"z": z.tolist(), "table": table.tolist()}
    return out


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
                 "torchani", "mace-torch", "e3nn", "chgnet", "torch-cluster"):
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


def run(cfg: DictConfig, output_dir: str) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    if cfg.teacher_mode not in ("precomputed", "online"):
        raise ValueError(f"teacher_mode must be 'precomputed' or 'online', got {cfg.teacher_mode!r}")
    if cfg.distill.weights.hessian > 0 and cfg.distill.rows < 1:
        raise ValueError("distill.weights.hessian > 0 needs distill.rows >= 1")
    build_store(cfg.subset)
    n2n = cfg.distill.weights.get("n2n", 0.0) > 0
    baseline = baseline_inputs(cfg, n2n, bool(cfg.distill.get("a2a", False)))
    dm = StoreDataModule(store=cfg.subset.store, teacher=teacher_for_training(cfg), rows=cfg.distill.rows,
                         batch_size=cfg.subset.batch_size, eval_batch_size=cfg.subset.eval_batch_size,
                         split=tuple(cfg.subset.split), split_seed=cfg.subset.split_seed, cutoff=cfg.student.cutoff,
                         max_neighbors=cfg.student.max_neighbors, graph_backend=cfg.graph_backend,
                         num_workers=cfg.num_workers, eval_rows=cfg.eval_rows, online=cfg.teacher_mode == "online",
                         split_by=cfg.subset.get("split_by"), split_file=cfg.subset.get("split_file"),
                         node_features=n2n, seed=cfg.seed)
    main_process = rank_zero_only.rank == 0  # under DDP every rank runs this function; one writes the files
    if main_process:
        dm.write_split_file(Path(output_dir) / "splits.json")
    module = DistillModule(student=cfg.student, weights=OmegaConf.to_container(cfg.distill.weights, resolve=True),
                           kd_norm=cfg.distill.kd_norm, row_strategy=cfg.row_strategy, **cfg.optim,
                           teacher=hydra.utils.instantiate(cfg.teacher) if cfg.teacher_mode == "online" else None,
                           **baseline)
    module.student.set_energy_statistics(*dm.energy_statistics())
    callbacks = [EMAWeightAveraging(decay=cfg.ema_decay), HalveKDWeight(**cfg.distill.halve_kd),
                 # best.ckpt: lowest validation loss; last.ckpt: the final weights (those the test metrics are of)
                 ModelCheckpoint(dirpath=Path(output_dir) / "checkpoints", monitor="val/loss_ef", filename="best",
                                 enable_version_counter=False),
                 ModelCheckpoint(dirpath=Path(output_dir) / "checkpoints", filename="last", enable_version_counter=False),
                 LearningRateMonitor()]
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=output_dir)
    if main_process:
        write_run_info(Path(output_dir))
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    result = {"run_name": cfg.run_name, "distill": cfg.distill.name, "teacher": cfg.teacher.name,
              "epochs": trainer.current_epoch, "lambda_kd_final": module.weights.hessian}
    if cfg.test:
        (test,) = trainer.test(module, datamodule=dm, verbose=False)
        result["test"] = {k: float(v) for k, v in test.items()}
    if trainer.is_global_zero:
        Path(output_dir, "metrics.json").write_text(json.dumps(result, indent=2))
        log.info("metrics written to %s", Path(output_dir, "metrics.json"))
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
