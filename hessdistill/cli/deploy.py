"""``hessdistill-deploy``: a trained student as one metatomic model file (ASE, LAMMPS, i-PI, torch-sim).

    hessdistill-deploy checkpoint=outputs/.../checkpoints/last.ckpt [target=student.pt] [dtype=float64]

Training runs deploy their last checkpoint themselves (``deploy.enabled`` in train.yaml), into the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from hessdistill.config import CONFIG_DIR
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.integrations.deploy import DEPLOYED_NAME, DeployError, deploy_student, student_species

log = logging.getLogger(__name__)


def default_target(checkpoint: str | Path) -> Path:
    """``deployed.pt`` in the run directory of ``<run>/checkpoints/<name>.ckpt``, else beside the checkpoint."""
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder / DEPLOYED_NAME


def deploy_checkpoint(checkpoint: str | Path, target: str | Path | None = None, devices=None,
                      dtype: str | None = None) -> dict:
    """Deploy the student of ``checkpoint`` (its EMA weights) to ``target``; returns what the file holds."""
    if dtype not in (None, "float32", "float64"):
        raise DeployError(f"dtype must be float32 or float64, got {dtype!r}")
    student = load_student(checkpoint, "cpu")
    path = deploy_student(student, target or default_target(checkpoint), tuple(devices) if devices else None,
                          getattr(torch, dtype) if dtype else None,
                          description=f"{type(student.representation).__name__} student of {checkpoint}")
    info = {"path": str(path), "checkpoint": str(checkpoint), "force_mode": student.force_mode,
            "cutoff": float(student.cutoff), "species": student_species(student),
            "dtype": dtype or str(student.atom_refs.dtype).removeprefix("torch.")}
    log.info("deployed %s to %s (%s forces, cutoff %.2f Å, %s)", checkpoint, path, info["force_mode"], info["cutoff"],
             info["dtype"])
    return info


def run(cfg: DictConfig) -> dict:
    return deploy_checkpoint(cfg.checkpoint, cfg.target, cfg.devices, cfg.dtype)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="deploy")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("deploy")
