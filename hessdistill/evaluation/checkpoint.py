"""Trained students from ``hessdistill-train`` checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from hessdistill.models.heads import ForceField


def load_student(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ForceField:
    """The student of a checkpoint, in eval mode. Checkpoints written during training hold the EMA weights
    (Lightning's weight averaging swaps them into ``state_dict``), which are the ones evaluated."""
    from hessdistill.training.module import DistillModule

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    student = DistillModule.load_from_checkpoint(path, map_location="cpu").student.eval()
    return student.to(device=device, dtype=dtype) if dtype is not None else student.to(device)
