"""``hessdistill-predict``: energies and forces of every frame of a structure file with a trained student.

    hessdistill-predict checkpoint=outputs/.../checkpoints/last.ckpt input=in.xyz output=out.xyz [device=cuda]
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from hessdistill.config import CONFIG_DIR
from hessdistill.devices import resolve_device
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.integrations.predict import predict_file

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    student = load_student(cfg.checkpoint, resolve_device(cfg.device), allow_unseen_elements=cfg.allow_unseen_elements)
    frames = predict_file(student, cfg.input, cfg.output, cfg.batch_size,
                          cfg.memory_warn_gib if cfg.memory_check else None)
    log.info("%d frames of %s predicted with %s into %s", frames, cfg.input, cfg.checkpoint, cfg.output)
    return {"frames": frames, "output": str(cfg.output)}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("predict")
