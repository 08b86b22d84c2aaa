"""Loss terms of Hessian distillation (Amin et al. 2025, Eq. 2–3 and §3.4), as pure functions.

Per-structure quantities are averaged over the B structures of a batch (never over unequal per-rank
batches), so the same loss results however a global batch is split (except the ``l2_per_atom`` KD norm,
which follows the authors' code and averages over atoms). Shapes: energies (B,) eV; forces
(Ntot, 3) eV/Å; ``batch`` (Ntot,) structure index of each atom; Hessian rows in lane layout (s, Ntot, 3) eV/Å².
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KDNorm = Literal["squared", "l2_per_atom"]


def per_structure_sum(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Σ over each structure's atoms: (Ntot,) → (B,) (index_add: twice differentiable)."""
    return values.new_zeros(num_graphs).index_add(0, batch, values)


def energy_loss(energy_pred: Tensor, energy_ref: Tensor, weight: Tensor | None = None) -> Tensor:
    """mean_i w_i |U_i − Û_i|², eV². weight: (B,) per-structure weights (None: all 1), e.g. 0 for teacher-labelled
    structures trained on forces only."""
    squared = (energy_pred - energy_ref) ** 2
    return (squared if weight is None else weight * squared).mean()


def force_loss(forces_pred: Tensor, forces_ref: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """mean_i Σ_atoms ‖f − f̂‖², (eV/Å)². Also the force-KD ablation when ``forces_ref`` are teacher forces,
    and the energy-gradient term λ_∇U‖F_ref + ∇U‖² when ``forces_pred`` = −∇Û of a direct-force student."""
    return per_structure_sum(((forces_pred - forces_ref) ** 2).sum(-1), batch, num_graphs).mean()


def hessian_kd_loss(student_rows: Tensor, teacher_rows: Tensor, batch: Tensor, num_graphs: int,
                    norm: KDNorm = "squared", weight: Tensor | None = None) -> Tensor:
    """Hessian distillation term for s sampled rows per structure.

    student_rows: (s, Ntot, 3) ∂F̂_j/∂r of the student (from ``hessian.rows.force_jacobian_rows``);
    teacher_rows: (s, Ntot, 3) H_j of the teacher. The residual is H_j + ∂F̂_j/∂r.
    norm "squared" (the paper): mean_i (1/s) Σ_j ‖H_j + ∂F̂_j/∂r‖² over all 3N entries, (eV/Å²)².
    norm "l2_per_atom" (the authors' code): mean over rows and atoms of the per-atom 3-vector L2 norm, eV/Å².
    weight: (B, s) importance weight of each structure's sampled rows, 1/(n·p_j) for rows drawn with probability
    p_j out of n (``hessian.row_sampling``), so the expected term is the uniform one; None: uniform rows.
    """
    residual = teacher_rows + student_rows
    lane_weight = None if weight is None else weight.T[:, batch]  # (s, Ntot): each atom takes its structure's
    if norm == "squared":
        per_lane = (residual**2).sum(-1)  # (s, Ntot): each atom's 3 entries
        per_atom = (per_lane if lane_weight is None else lane_weight * per_lane).mean(0)  # (1/s) Σ_j
        return per_structure_sum(per_atom, batch, num_graphs).mean()
    if norm == "l2_per_atom":
        norms = residual.norm(dim=-1)
        return (norms if lane_weight is None else lane_weight * norms).mean()
    raise ValueError(f"unknown Hessian-KD norm {norm!r}; choose 'squared' or 'l2_per_atom'")


def hessian_hvp_loss(student_products: Tensor, teacher_products: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Hessian distillation by k random probes per structure (``hessian.probes``), scaled like the rows term.

    student_products: (k, Ntot, 3) J v = (∂F̂/∂r) v of the student; teacher_products: (k, Ntot, 3) H v of the
    teacher, eV/Å², for probes v with E[v vᵀ] = I. The residual is (H + J) v, and the term is

        mean_i (1 / (k · 3N_i)) Σ_m ‖(H_i + J_i) v_m‖²,  (eV/Å²)²,

    whose expectation over the probes is mean_i ‖H_i + J_i‖²_F / (3N_i): exactly the expectation of the rows term
    (``hessian_kd_loss``, norm "squared": (1/s) Σ_j ‖row_j‖² over s uniform rows of 3N), so λ_KD means the same for
    both; only the variance differs.
    """
    per_atom = ((teacher_products + student_products) ** 2).sum(-1).mean(0)  # (Ntot,): (1/k) Σ_m, 3 entries each
    coordinates = 3 * per_structure_sum(torch.ones_like(per_atom), batch, num_graphs)  # 3N_i
    return (per_structure_sum(per_atom, batch, num_graphs) / coordinates).mean()


def node_feature_loss(student_projected: Tensor, teacher_features: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """n2n baseline: mean_i of the mean over structure i's atoms of ‖h_T − P h_S‖²; features (Ntot, F_t)."""
    per_atom = ((student_projected - teacher_features) ** 2).sum(-1)
    counts = per_structure_sum(torch.ones_like(per_atom), batch, num_graphs)
    return (per_structure_sum(per_atom, batch, num_graphs) / counts).mean()


def hessian_row_mae(student_rows: Tensor, teacher_rows: Tensor) -> Tensor:
    """Mean absolute error of the Hessian rows, eV/Å²: mean |H_j + ∂F̂_j/∂r| over all entries."""
    return (teacher_rows + student_rows).abs().mean()
