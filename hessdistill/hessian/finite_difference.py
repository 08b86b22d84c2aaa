"""Central finite differences of forces: the one finite-difference Jacobian (teachers and tests use it).

Column j of the force Jacobian is J[:, j] = ∂F/∂r_j ≈ (F(r + δ e_j) − F(r − δ e_j)) / (2δ), eV/Å², from two force
evaluations per coordinate; for a conservative model J = −H. Displaced copies are made in float64 whatever the
model's precision, so the step really is δ.

Default step δ, by the precision the model computes forces in (``default_delta``): 1e-5 Å in float64,
1e-3 Å in float32 or unknown (any ASE calculator) — near ε^(1/3) times the length scale, where
central-difference truncation (∝ δ²) and round-off (∝ ε/δ) balance. Measured: relative Frobenius error
‖H_fd − H_autograd‖ / ‖H_autograd‖ against the autograd Hessian of the same model, worst of rattled H2O and
NH3 (tests/teachers/test_finite_difference_teacher.py re-checks the MACE rows and ANI at 1e-3 and 1e-5 Å):

    δ (Å)                   1e-2     3e-3     1e-3     3e-4     1e-4     1e-5     1e-6     1e-7
    tiny MACE, float64      1.7e-3   1.5e-4   1.7e-5   1.5e-6   1.7e-7   1.7e-9   4.8e-10  3.3e-9
    tiny MACE, float32      1.7e-3   1.8e-4   2.7e-4   7.9e-4   2.3e-3   2.5e-2   1.6e-1   1.7
    ANI-1x, float64         4.6e-2   2.6e-2   1.3e-2   2.5e-4   5.7e-5   1.7e-8   2.3e-9   2.0e-9
    ANI-1x, float32         4.6e-2   2.6e-2   1.2e-2   3.5e-4   6.8e-4   7.2e-3   6.8e-2   4.4e-1

The smooth MACE shows pure truncation (∝ δ²) down to a float64 minimum at 1e-6 … 1e-5 Å and a float32
minimum at 1e-3 … 3e-3 Å, with round-off growing as 1/δ below. ANI's CELU activations make its Hessian only
piecewise continuous: a step straddling a kink of the second derivative costs ~1 % at δ ≥ 1e-3 Å, so small
steps pay off there too. A calculator's precision is unknown, and most foundation models run in float32, so
it gets the float32 step (error ~1 % for ANI, 2e-5 for MACE in float64); pass delta=1e-5 for a float64 calculator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

DEFAULT_DELTA = {torch.float64: 1e-5, torch.float32: 1e-3}  # Å, by model precision; see the module docstring


def default_delta(dtype: torch.dtype) -> float:
    """Default central-difference step (Å) for a model computing forces in ``dtype``; the float32 step otherwise."""
    return DEFAULT_DELTA.get(dtype, DEFAULT_DELTA[torch.float32])


def displaced_positions(pos: Tensor, delta: float, coordinates: Tensor | None = None) -> Tensor:
    """Copies of one structure's positions (N, 3) Å with ±δ on each chosen coordinate j = 3·atom + axis:
    (2k, N, 3) float64, +δ on coordinates[0..k−1] first, then −δ. coordinates: (k,) (None: all 3N)."""
    flat = pos.detach().double().reshape(1, -1)
    steps = delta * torch.eye(flat.shape[1], dtype=flat.dtype, device=flat.device)
    if coordinates is not None:
        steps = steps[coordinates.to(flat.device)]
    return torch.cat([flat + steps, flat - steps]).view(-1, *pos.shape)


def jacobian_columns(forces: Tensor, delta: float) -> Tensor:
    """Forces (2k, N, 3) eV/Å at ``displaced_positions`` → force-Jacobian columns (k, 3N) eV/Å²: entry [c, a] is
    ∂F_a/∂r_j for the c-th displaced coordinate j (for a conservative model, minus row j of the symmetric H)."""
    k = forces.shape[0] // 2
    return (forces[:k] - forces[k:]).reshape(k, -1) / (2 * delta)


def hessian_from_displaced_forces(forces: Tensor, delta: float) -> Tensor:
    """Forces (6N, N, 3) eV/Å at ``displaced_positions`` of all 3N coordinates → raw (unsymmetrised) Hessian
    H = −J, (3N, 3N) eV/Å² (column j of J is the j-th displaced pair; hence the transpose)."""
    return -jacobian_columns(forces, delta).T


def finite_difference_force_jacobian(force_fn: Callable[[Tensor], Tensor], pos: Tensor, delta: float = 1e-3) -> Tensor:
    """Central-difference Jacobian J[a, b] = ∂F_a/∂r_b of one structure's forces, (3N, 3N) eV/Å².

    force_fn: (N, 3) Å → (N, 3) eV/Å. Displacing coordinate b gives *column* b of J; for a conservative model
    J = −H is symmetric, for a direct-force model it need not be (rows from VJPs are J's rows).
    """
    displaced = displaced_positions(pos, delta).to(pos.dtype)
    return -hessian_from_displaced_forces(torch.stack([force_fn(p) for p in displaced]), delta)


def lane_offsets(pos: Tensor, lanes: Tensor, step: float) -> Tensor:
    """Displacements (s, Ntot, 3) that move, in lane k, every structure's k-th sampled coordinate by ``step`` Å
    (negative: backwards), in the dtype of pos (Ntot, 3) Å and exactly representable: offset = fl(r + h) − r, so
    r + offset is exactly the displaced coordinate and the step actually taken is the offset itself (in float32 a
    nominal 1e-4 Å at r ≈ 5 Å would otherwise be off by up to 0.5 %). lanes: (s, Ntot, 3) one-hot
    (``hessian.rows.row_lanes``), or probe vectors v, each coordinate moved by ≈ h·v_c (its own rounding left in: a
    relative error of ~ulp(r)/h, 1e-3 in float32 at the default step, below the one-sided truncation error)."""
    base = pos.detach()
    return (base + step * lanes) - base


def lane_steps(offsets: Tensor, batch: Tensor, num_graphs: int, lanes: Tensor | None = None) -> Tensor:
    """The step each structure takes in each lane, broadcast to its atoms: offsets (s, Ntot, 3) from ``lane_offsets``,
    batch (Ntot,) structure index → (s, Ntot, 1) float64 Å (1 for a structure without a row in that lane, whose
    force differences are then exactly zero).

    lanes: the directions v (s, Ntot, 3) of the offsets when they are not one-hot (probe vectors): the step is then
    the least-squares h of offset ≈ h·v in each structure, Σ d·v / Σ v·v (for a one-hot lane, the one offset)."""
    along = offsets.double().sum(-1) if lanes is None else (offsets.double() * lanes.double()).sum(-1)
    per_structure = offsets.new_zeros(offsets.shape[0], num_graphs, dtype=torch.float64)
    per_structure.index_add_(1, batch, along)
    if lanes is not None:
        norms = offsets.new_zeros(offsets.shape[0], num_graphs, dtype=torch.float64)
        norms.index_add_(1, batch, lanes.double().square().sum(-1))
        per_structure = per_structure / torch.where(norms == 0, torch.ones_like(norms), norms)
    per_structure = torch.where(per_structure == 0, torch.ones_like(per_structure), per_structure)
    return per_structure[:, batch, None]


def finite_difference_lanes(forward: Tensor, forward_steps: Tensor, reference: Tensor,
                            reference_steps: Tensor | float = 0.0) -> Tensor:
    """Force-Jacobian lanes (s, Ntot, 3) eV/Å² = (F(r + h e_j) − F_ref) / (h − h_ref), from forces at displaced copies.

    One-sided (the authors' SPICE runs): forward (s, Ntot, 3) eV/Å at r + h e_j(k), steps (s, Ntot, 1) Å
    (``lane_steps``), reference the undisplaced forces (1, Ntot, 3), reference_steps 0: error O(h). Central:
    reference the forces at r − h e_j(k), (s, Ntot, 3), with their (negative) steps: error O(h²).

    Displacing coordinate j gives *column* j of the force Jacobian, J e_j = ∂F/∂r_j, where a VJP gives row j,
    ∂F_j/∂r. For a conservative student J = −H is symmetric and the two agree; for a direct-force student J need
    not be symmetric, and matching its columns to the (symmetric) teacher Hessian rows is what the authors' code does.
    """
    return ((forward - reference) / (forward_steps - reference_steps)).to(forward.dtype)
