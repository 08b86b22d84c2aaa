"""Force-Jacobian lanes by forward-mode differentiation (dual numbers, ``torch.autograd.forward_ad``).

The tangent of the forces in the direction of a one-hot lane (Ntot, 3) (``hessian.rows.row_lanes``) is, inside each
structure's atoms, the Jacobian *column* J e_j = ∂F/∂r_j of that structure's sampled coordinate j, exact (no step):
equal to the row for a conservative student (J = −H symmetric), the column for a direct-force one, as with finite
differences (``finite_difference.finite_difference_lanes``). The tangents are built from ordinary differentiable
ops, so the loss on them back-propagates to the parameters (reverse over forward). One dual forward per lane; its
primal outputs are the undisplaced ones, so at s = 1 the batch needs no separate forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor


def jvp_lanes(fn: Callable[[Tensor], tuple[Tensor, ...]], pos: Tensor, lanes: Tensor, output: int
              ) -> tuple[tuple[Tensor, ...], Tensor]:
    """Evaluate ``fn`` (pos (Ntot, 3) Å → tuple of outputs) with the tangent of each lane (L, Ntot, 3), L ≥ 1.

    Returns the primal outputs of the first evaluation (differentiable w.r.t. pos and parameters) and the tangents of
    ``fn``'s output number ``output`` (e.g. forces (Ntot, 3) eV/Å → (L, Ntot, 3) eV/Å²). Raises what the op without a
    forward-mode rule raises (NotImplementedError or RuntimeError); the caller decides how to fall back.
    """
    primal, tangents = None, []
    for lane in lanes:
        with fwAD.dual_level():
            outputs = fn(fwAD.make_dual(pos, lane))
            unpacked = [fwAD.unpack_dual(o) for o in outputs]
        if primal is None:
            primal = tuple(u.primal for u in unpacked)
        tangent = unpacked[output].tangent
        tangents.append(tangent if tangent is not None else primal[output].new_zeros(primal[output].shape))
    return primal, torch.stack(tangents)
