"""The one device setting of every entry point: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or
``cuda:<index>``. Precompute (teacher and batches), evaluation (student, teacher, speed, MD, spectra), the labelling
command's teacher MD and the ASE calculator run where it says; training follows the Lightning trainer's settings
(``trainer=gpu``), and an online teacher follows the batches to their device."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch device ``spec`` names; ValueError naming the setting when it is unknown or not on this machine."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={spec!r} is not a device: use auto, cpu, cuda or cuda:<index>") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={spec!r}: hessdistill runs on cpu or cuda devices")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r}, but torch sees no CUDA device here (torch {torch.__version__}); "
                             f"use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={spec!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def shard_device(spec: str | torch.device, shard: int) -> torch.device:
    """The device of precompute shard ``shard``: with ``auto`` on a machine with n GPUs, GPU shard % n (one process
    per GPU of a node); otherwise the device ``spec`` names."""
    if spec == "auto" and torch.cuda.is_available():
        return torch.device("cuda", shard % torch.cuda.device_count())
    return resolve_device(spec)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a model's parameters (or, without any, its buffers) live; the CPU for a model with neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
