"""The one metric set of validation, test and ``hessdistill-evaluate``: errors of a model's energies, forces and
Hessian rows against a batch's labels, each as (batch mean, weight), so a weighted mean over batches is the mean
over the whole split.

Names and units: ``energy_mae`` meV/atom, ``force_mae`` meV/Å, ``hessian_mae`` eV/Å² (over the batch's sampled rows),
``loss_ef`` the energy and force terms λ_U·|U − Û|² + λ_F·Σ‖F − F̂‖² (eV², what the λ_KD schedule compares), and
the same of the teacher's labels against the reference as ``teacher_energy_mae``, ``teacher_force_mae``,
``teacher_loss_ef`` when the batch carries them.
"""

from __future__ import annotations

from torch import Tensor

from hessdistill import losses

UNITS = {"energy_mae": "meV/atom", "force_mae": "meV/Å", "hessian_mae": "eV/Å²", "loss_ef": "eV²",
         "teacher_energy_mae": "meV/atom", "teacher_force_mae": "meV/Å", "teacher_loss_ef": "eV²"}


def energy_force_metrics(energy: Tensor, forces: Tensor, batch, lambda_energy: float,
                         lambda_forces: float) -> dict[str, tuple[Tensor, int]]:
    """energy (B,) eV and forces (Ntot, 3) eV/Å against the batch's reference labels: energy_mae (weight B),
    force_mae (weight Ntot) and loss_ef (weight B)."""
    n, n_atoms = batch.num_graphs, batch.pos.shape[0]
    loss_ef = lambda_energy * losses.energy_loss(energy, batch.energy) + \
        lambda_forces * losses.force_loss(forces, batch.forces, batch.batch, n)
    return {"energy_mae": (1e3 * ((energy - batch.energy).abs() / batch.natoms).mean(), n),
            "force_mae": (1e3 * (forces - batch.forces).abs().mean(), n_atoms),
            "loss_ef": (loss_ef, n)}


def batch_metrics(energy: Tensor, forces: Tensor, batch, student_rows: Tensor | None = None,
                  lambda_energy: float = 1.0, lambda_forces: float = 1.0) -> dict[str, tuple[Tensor, int]]:
    """The metric set of one batch for a model's detached energy (B,) eV, forces (Ntot, 3) eV/Å and, where the
    batch has teacher rows, the model's force-Jacobian rows (s, Ntot, 3) eV/Å² at its ``sampled_rows``.
    λs: the run's energy and force weights (for ``loss_ef``)."""
    out = energy_force_metrics(energy, forces, batch, lambda_energy, lambda_forces)
    if student_rows is not None and hasattr(batch, "teacher_rows"):
        out["hessian_mae"] = (losses.hessian_row_mae(student_rows, batch.teacher_rows), batch.pos.shape[0])
    if hasattr(batch, "teacher_energy"):
        teacher = energy_force_metrics(batch.teacher_energy, batch.teacher_forces, batch, lambda_energy, lambda_forces)
        out.update({f"teacher_{k}": v for k, v in teacher.items()})
    return out


NAMES = {"energy_mae": "energy MAE", "force_mae": "force MAE", "hessian_mae": "Hessian-row MAE", "loss_ef": "L_EF"}


def metric_label(name: str) -> str:
    """A metric's name for a table header, with its unit: ``force_mae`` → ``force MAE (meV/Å)``,
    ``teacher_energy_mae`` → ``teacher energy MAE (meV/atom)``; a name it does not know comes back as it is."""
    base = name.removeprefix("teacher_")
    if base not in NAMES:
        return name
    return f"{'teacher ' if base != name else ''}{NAMES[base]} ({UNITS[base]})"
