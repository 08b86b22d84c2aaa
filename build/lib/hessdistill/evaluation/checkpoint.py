"""Trained students from ``hessdistill-train`` checkpoints, rebuilt without running code the checkpoint names.

A checkpoint holds the student's Hydra config and plugins (``hyper_parameters``) and the EMA weights (Lightning's
weight averaging swaps them into ``state_dict``). The checkpoint file is read with ``weights_only=True`` (tensors and
plain containers only, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says), and every ``_target_`` in its configs
must be one of this package's student or plugin factories before anything is built.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch

from hessdistill.models.base import ForceField

ALLOWED_TARGETS = ("hessdistill.models.", "hessdistill.training.plugins.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as a hessdistill student; the message names the file."""


def _check_targets(config, path: Path) -> None:
    """Every ``_target_`` anywhere in ``config`` must name a hessdistill student or plugin factory."""
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and not (isinstance(target, str) and target.startswith(ALLOWED_TARGETS)):
            raise CheckpointError(f"{path}: refusing to build {target!r}: a student checkpoint may only name "
                                  f"{', '.join(p + '*' for p in ALLOWED_TARGETS)}")
        for value in config.values():
            _check_targets(value, path)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _check_targets(value, path)


def _read(path: Path) -> tuple[dict, dict]:
    """(hyper-parameters, state_dict) of a training checkpoint, read as tensors and plain containers only."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        hparams["student"]  # noqa: B018 (a student checkpoint has its config)
    except Exception as exc:  # noqa: BLE001 (any unreadable file gets the same one-line answer)
        raise CheckpointError(f"{path}: not a hessdistill training checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    return hparams, state


def checkpoint_weights(path: str | Path) -> dict[str, float]:
    """The configured weight of each loss term of the run that wrote the checkpoint (name → λ)."""
    hparams, _ = _read(Path(path))
    return {name: float(term.get("weight", 0.0)) for name, term in hparams.get("terms", {}).items()}


def load_student(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ForceField:
    """The student of a checkpoint, in eval mode, with its EMA weights, on ``device`` (in ``dtype`` if given)."""
    path = Path(path)
    hparams, state = _read(path)
    config, plugins = hparams["student"], hparams.get("plugins", [])
    _check_targets([config, plugins], path)
    student = hydra.utils.instantiate(config)
    for plugin in plugins:
        hydra.utils.instantiate(plugin).apply(student)
    student.load_state_dict({k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")})
    student = student.eval()
    return student.to(device=device, dtype=dtype) if dtype is not None else student.to(device)
