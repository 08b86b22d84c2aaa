"""Accuracy of a student, and of its teacher, on a split of a store: energy, force and Hessian-row errors.

Units: energy MAE meV/atom, force MAE meV/Å, Hessian-row MAE eV/Å² (over ``rows`` rows per structure drawn with a
fixed seed, as in validation). The arrays behind the numbers are returned for parity plots.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from hessdistill.data.datamodule import StoreDataset
from hessdistill.data.store import HessianStore
from hessdistill.hessian import force_jacobian_rows


def evaluate_split(student, store: HessianStore, indices: np.ndarray, teacher: str | None = None, rows: int = 4,
                   batch_size: int = 32, graph_backend: str = "auto", seed: int = 10_000) -> dict:
    """Predictions and errors on ``indices`` of ``store``.

    teacher: the store's teacher group: its energies/forces are scored against the reference labels too, and its
    Hessian rows are the target of the student's (None: no teacher metrics). Returns ``metrics`` (a flat dict of
    MAEs and counts) and ``arrays``: per-structure energies per atom (reference, student, teacher) in eV/atom
    and force components (reference, student, teacher) in eV/Å.
    """
    dtype = next(student.parameters()).dtype
    device = next(student.parameters()).device
    with_rows = teacher is not None and rows > 0
    dataset = StoreDataset(store, indices, teacher, rows if with_rows else 0, student.cutoff, student.max_neighbors,
                           graph_backend, dtype, fixed_rows_seed=seed)
    out = {k: [] for k in ("e_ref", "e_student", "e_teacher", "f_ref", "f_student", "f_teacher")}
    hessian_abs, hessian_count = 0.0, 0
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="accuracy", unit="batch"):
        batch = batch.to(device)
        with torch.enable_grad():
            pred = student(batch, create_graph=with_rows and student.force_mode == "conservative")
            if with_rows:
                jac = force_jacobian_rows(pred["forces"], pred["pos"], batch.hess_row, batch.ptr, create_graph=False)
                residual = (batch.hess_rows.permute(1, 0, 2) + jac.detach()).abs()
                hessian_abs += float(residual.sum())
                hessian_count += residual.numel()
        natoms = batch.natoms.to(dtype)
        out["e_ref"].append(batch.energy / natoms)
        out["e_student"].append(pred["energy"].detach() / natoms)
        out["f_ref"].append(batch.forces.reshape(-1))
        out["f_student"].append(pred["forces"].detach().reshape(-1))
        if teacher is not None:
            out["e_teacher"].append(batch.teacher_energy / natoms)
            out["f_teacher"].append(batch.teacher_forces.reshape(-1))
    arrays = {k: torch.cat(v).cpu().double().numpy() if v else None for k, v in out.items()}
    metrics = {"structures": len(indices),
               "student_energy_mae_meV_per_atom": 1e3 * float(np.abs(arrays["e_student"] - arrays["e_ref"]).mean()),
               "student_force_mae_meV_per_A": 1e3 * float(np.abs(arrays["f_student"] - arrays["f_ref"]).mean())}
    if with_rows:
        metrics["student_hessian_row_mae_eV_per_A2"] = hessian_abs / hessian_count
        metrics["hessian_rows_per_structure"] = rows
    if teacher is not None:
        metrics["teacher_energy_mae_meV_per_atom"] = 1e3 * float(np.abs(arrays["e_teacher"] - arrays["e_ref"]).mean())
        metrics["teacher_force_mae_meV_per_A"] = 1e3 * float(np.abs(arrays["f_teacher"] - arrays["f_ref"]).mean())
    return {"metrics": metrics, "arrays": arrays}
