"""What a student predicts for a batch, computed only as far as asked: energy, forces and node features from its
forward, and on request the energy gradient of a direct-force student and its force-Jacobian rows at the batch's
sampled rows (``hessian.rows``). Shared by training, validation and evaluation."""

from __future__ import annotations

import torch
from torch import Tensor

from hessdistill.hessian.rows import RowStrategy, force_jacobian_rows


def predict(student, batch, wanted: frozenset[str] | set[str], create_graph: bool,
            strategy: RowStrategy = "auto") -> dict[str, Tensor]:
    """energy (B,) eV, forces (Ntot, 3) eV/Å, node_features (Ntot, F_s), pos (Ntot, 3) (the leaf they depend on) and,
    if ``wanted``, energy_gradient_forces −∇Û (Ntot, 3) eV/Å and force_jacobian_rows (s, Ntot, 3) eV/Å² at
    ``batch.sampled_rows`` (skipped when the batch has none). create_graph: keep every prediction differentiable
    w.r.t. the student's parameters (training); otherwise they are computed without a graph beyond what rows need."""
    rows = "force_jacobian_rows" in wanted and hasattr(batch, "sampled_rows")
    with torch.enable_grad():
        out = student(batch, create_graph=create_graph or (rows and student.force_mode == "conservative"))
        if "energy_gradient_forces" in wanted:
            (grad,) = torch.autograd.grad(out["energy"].sum(), out["pos"], create_graph=create_graph,
                                          retain_graph=True)
            out["energy_gradient_forces"] = -grad
        if rows:
            out["force_jacobian_rows"] = force_jacobian_rows(out["forces"], out["pos"], batch.sampled_rows, batch.ptr,
                                                             create_graph=create_graph, strategy=strategy)
    return out if create_graph else {k: v.detach() for k, v in out.items()}
