"""Trained students from ``hessdistill-train`` checkpoints: files are data, rebuilt through the registry.

A checkpoint holds the student and its plugins as registry keys with plain keyword arguments
(``hyper_parameters``; ``hessdistill.registry``) and the EMA weights (Lightning's weight averaging swaps them into
``state_dict``). The file is read with ``weights_only=True`` (tensors and plain containers only, whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says); the student is the registered class called with the recorded arguments,
bound against its signature first. Checkpoints written before the registry name a ``_target_`` instead: one that is
exactly a target hessdistill wrote converts to its key, any other is refused. Weights must be finite. A checkpoint
written before students recorded their training elements gets them from its reference energies
(``models.elements.add_legacy_elements``), with a warning.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

from hessdistill.errors import HessdistillError
from hessdistill.models.base import ForceField
from hessdistill.models.elements import add_legacy_elements, symbols
from hessdistill.registry import PLUGINS, STUDENTS, Record, RecordError

log = logging.getLogger(__name__)


class CheckpointError(HessdistillError, ValueError):
    """A checkpoint that cannot be loaded as a hessdistill student; the message names the file."""


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
    if (odd := next((name for name, value in state.items() if not torch.is_tensor(value)), None)) is not None:
        raise CheckpointError(f"{path}: not a hessdistill training checkpoint: its state_dict entry {odd!r} is not a "
                              f"tensor")
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
    terms = hparams.get("terms", {})
    if not (isinstance(terms, dict) and all(isinstance(term, dict) and type(term.get("weight", 0.0)) in (int, float)
                                            for term in terms.values())):
        raise CheckpointError(f"{path}: its loss terms are not term settings with numeric weights: the file was "
                              f"edited")
    return {name: float(term.get("weight", 0.0)) for name, term in terms.items()}


def _records(hparams: dict, path: Path) -> tuple[Record, list[Record]]:
    """The student's and plugins' records of a checkpoint's hyper-parameters (CheckpointError naming the file)."""
    plugins = hparams.get("plugins", [])
    try:
        if not isinstance(plugins, list):
            raise RecordError(f"its plugins are a {type(plugins).__name__}, not a list")
        return STUDENTS.from_file(hparams["student"]), [PLUGINS.from_file(p) for p in plugins]
    except RecordError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def non_finite(weights: dict[str, torch.Tensor]) -> str | None:
    """The first tensor of ``weights`` (name → tensor, in order) holding NaN or inf, described; None if none."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            return f"{name} holds {count} NaN or inf of its {tensor.numel()} values"
    return None


def _build(student: Record, plugins: list[Record], path: Path) -> ForceField:
    """The student of ``student`` with ``plugins`` applied (no data: they recorded what they read)."""
    try:
        model = STUDENTS.build(student)
        for plugin in plugins:
            PLUGINS.build(plugin).apply(model)
    except RecordError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (a class refusing its recorded settings: one line naming the file)
        raise CheckpointError(f"{path}: its student {student.key} cannot be built from the settings it records "
                              f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})") from None
    if not isinstance(model, ForceField):
        raise CheckpointError(f"{path}: its student {student.key} builds a {type(model).__name__}, not a ForceField")
    return model


def load_student(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 allow_unseen_elements: bool = False) -> ForceField:
    """The student of a checkpoint, in eval mode, with its EMA weights, on ``device`` (in ``dtype`` if given).
    Every path that evaluates it refuses structures with elements it was not trained on, naming ``path``, unless
    ``allow_unseen_elements`` (``models.elements``)."""
    path = Path(path)
    hparams, state = _read(path)
    student = _build(*_records(hparams, path), path)
    weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    if (legacy := add_legacy_elements(weights)) is not None:
        log.warning("%s predates students recording their training elements: taking them from its non-zero "
                    "reference energies (%s)", path, symbols(legacy))
    if (mismatch := weights_mismatch(student.state_dict(), weights)) is not None:
        raise CheckpointError(f"{path}: its weights do not fit the student its own config builds ({mismatch}): "
                              f"the file was edited or assembled from two runs")
    if (bad := non_finite(weights)) is not None:
        raise CheckpointError(f"{path}: weight {bad}: the training diverged or the file is damaged")
    student.load_state_dict(weights)
    student = student.eval()
    student.source, student.allow_unseen_elements = str(path), allow_unseen_elements
    return student.to(device=device, dtype=dtype) if dtype is not None else student.to(device)


def _student(record: Record, differ: list[str]) -> str:
    """A student record as its class name, with ``(key=value, …)`` of the ``differ``-ing arguments when the class is
    the same (``differ`` is ``["key"]`` when it is not)."""
    name = STUDENTS.name(record.key)
    if differ == ["key"]:
        return name
    shown = ", ".join(f"{k}={record.kwargs.get(k)!r}" for k in differ[:4])
    return f"{name}({shown}{', …' if len(differ) > 4 else ''})"


def check_resumable(path: str | Path, module) -> None:
    """Refuse, in one line naming ``ckpt_path``, to resume ``module`` (a prepared ``DistillModule``) from a file
    that is not a readable training checkpoint (read weights only, before Lightning reads it, itself weights only),
    whose student or loss-term weights are not the ones this run builds, or whose weights are not finite."""
    path = Path(path)
    hparams, state = _read(path)
    add_legacy_elements(state, "student.")  # as DistillModule.on_load_checkpoint adds them when Lightning reads it
    theirs, _ = _records(hparams, path)
    ours = Record(module.hparams["student"]["key"], module.hparams["student"]["kwargs"])
    differ = ["key"] if theirs.key != ours.key else \
        sorted(k for k in theirs.kwargs.keys() | ours.kwargs.keys() if theirs.kwargs.get(k) != ours.kwargs.get(k))
    if differ:
        raise CheckpointError(f"ckpt_path={path} was trained with student {_student(theirs, differ)}, this run's "
                              f"config builds {_student(ours, differ)}: resume with the student settings it was "
                              f"trained with (its run directory's config.yaml), or drop ckpt_path to start anew")
    if (mismatch := weights_mismatch(module.state_dict(), state)) is not None:
        raise CheckpointError(f"ckpt_path={path}: its weights do not fit this run's student and loss terms "
                              f"({mismatch}): resume with the distill config it was trained with, or drop ckpt_path")
    if (bad := non_finite(state)) is not None:
        raise CheckpointError(f"ckpt_path={path}: weight {bad}: resume from an earlier checkpoint, or drop ckpt_path")
