"""Trained students from ``hessdistill-train`` checkpoints, rebuilt without running code the checkpoint names.

A checkpoint holds the student's Hydra config and plugins (``hyper_parameters``) and the EMA weights (Lightning's
weight averaging swaps them into ``state_dict``). The checkpoint file is read with ``weights_only=True`` (tensors and
plain containers only, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says), and every ``_target_`` in its configs
must be one of this package's student or plugin factories before anything is built.
"""

from __future__ import annotations

import pickle
import re
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


def _unreadable(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in our words: torch's own message advises retrying with
    ``weights_only=False``, which would run whatever code the file names."""
    if isinstance(exc, EOFError):
        return "the file is empty or ends early (an interrupted copy or write?)"
    if isinstance(exc, pickle.UnpicklingError) and (found := re.search(r"GLOBAL (\S+)", str(exc))):
        return (f"it holds a Python object ({found.group(1)}) besides tensors and plain containers; checkpoints are "
                f"read as weights only, and no code a file names is run")
    if isinstance(exc, (pickle.UnpicklingError, RuntimeError)):
        return "its bytes are not a PyTorch checkpoint (another kind of file, or a corrupted one)"
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _read(path: Path) -> tuple[dict, dict]:
    """(hyper-parameters, state_dict) of a training checkpoint, read as tensors and plain containers only."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file gets one line in our words)
        raise CheckpointError(f"{path}: not a hessdistill training checkpoint: {_unreadable(exc)}") from None
    hparams, state = (checkpoint.get(key) if isinstance(checkpoint, dict) else None
                      for key in ("hyper_parameters", "state_dict"))
    if not (isinstance(hparams, dict) and isinstance(hparams.get("student"), dict) and isinstance(state, dict)):
        raise CheckpointError(f"{path}: not a hessdistill training checkpoint: a PyTorch file without the "
                              f"hyper_parameters.student config and state_dict that hessdistill-train writes")
    return hparams, state


def weights_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """How the weights ``found`` (name → tensor) fail to fit a model whose own are ``expected``: the missing,
    unexpected and misshapen names (the first three of each), or None when they fit."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
              for k in sorted(expected.keys() & found.keys()) if tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = [f"{what} {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
             for what, names in (("missing", missing), ("unexpected", unexpected), ("shapes of", shapes)) if names]
    return "; ".join(parts) or None


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
    weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    if (mismatch := weights_mismatch(student.state_dict(), weights)) is not None:
        raise CheckpointError(f"{path}: its weights do not fit the student its own config builds ({mismatch}): "
                              f"the file was edited or assembled from two runs")
    student.load_state_dict(weights)
    student = student.eval()
    return student.to(device=device, dtype=dtype) if dtype is not None else student.to(device)


def _student(config: dict, keys: list[str]) -> str:
    """A student config as its class name, with ``(key=value, …)`` of the differing ``keys`` when the class is the
    same (``_target_`` not among them)."""
    name = str(config.get("_target_")).rsplit(".", 1)[-1]
    if "_target_" in keys:
        return name
    return f"{name}({', '.join(f'{k}={config.get(k)!r}' for k in keys[:4])}{', …' if len(keys) > 4 else ''})"


def check_resumable(path: str | Path, module) -> None:
    """Refuse, in one line naming ``ckpt_path``, to resume ``module`` (a prepared ``DistillModule``) from a file
    that is not a readable training checkpoint (read weights only, before Lightning reads it), or whose student or
    loss-term weights are not the ones this run builds."""
    path = Path(path)
    hparams, state = _read(path)
    theirs, ours = hparams["student"], module.hparams["student"]
    differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if differ:
        raise CheckpointError(f"ckpt_path={path} was trained with student {_student(theirs, differ)}, this run's "
                              f"config builds {_student(ours, differ)}: resume with the student settings it was "
                              f"trained with (its run directory's config.yaml), or drop ckpt_path to start anew")
    if (mismatch := weights_mismatch(module.state_dict(), state)) is not None:
        raise CheckpointError(f"ckpt_path={path}: its weights do not fit this run's student and loss terms "
                              f"({mismatch}): resume with the distill config it was trained with, or drop ckpt_path")
