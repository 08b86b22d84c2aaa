"""``hessdistill-onpolicy``: a training run followed by on-policy rounds (``hessdistill.augment.onpolicy``): the
student's own MD, the snapshots it gets most wrong labelled by the teacher and added to training, more training.

    hessdistill-onpolicy experiment=demo onpolicy.rounds=3 onpolicy.select=32
    hessdistill-onpolicy experiment=demo hydra.run.dir=outputs/onpolicy/<run>    # resume a killed run

Writes ``rounds.json`` (one entry per round) beside what ``hessdistill-train`` writes into the run directory, and
each round's store under ``rounds/``.
"""

from __future__ import annotations

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hessdistill.augment.onpolicy import run_rounds
from hessdistill.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="onpolicy")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    run_rounds(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("onpolicy")
