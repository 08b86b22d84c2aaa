"""Hessian-vector products for random probe vectors (Hutchinson-style KD; NVIDIA nvalchemi-toolkit's choice).

Instead of s rows H_j, a structure gets k probes v (3N,) with independent entries of zero mean and unit variance
(Rademacher ±1 or standard Gaussian), so E[v vᵀ] = I and, for any matrix A (3N, 3N),

    E ‖A v‖² = E vᵀ AᵀA v = tr(AᵀA) = ‖A‖²_F.

With A = H + ∂F̂/∂r (teacher Hessian plus the student's force Jacobian J, eV/Å²), k probes estimate ‖A‖²_F from the
teacher's H v and the student's J v: one product per probe, the cost of one row. Probes are laid out as lanes
(k, Ntot, 3) like rows (``hessdistill.hessian``): lane m holds every structure's m-th probe in its atoms, so one
batched product serves the whole batch. The loss's normalisation against the rows term is ``losses.hessian_hvp_loss``.

The student's product is the Jacobian–vector product J v (what the teacher's H v pairs with; J is not symmetric for a
direct-force student): ``jacobian_vector_products`` computes it in reverse mode, by one VJP when J is symmetric
(conservative) and by the double-VJP trick otherwise; forward mode and finite differences along v give the same
product (``training.predictions``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hessdistill.hessian.rows import mixed_seed, vjp_lanes

ProbeDistribution = Literal["rademacher", "gaussian"]
PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")
PROBE_STREAM = 0x5EED_9B0B  # keeps probe draws apart from row draws of the same (seed, epoch, structure)


def probe_generator(structure: int, seed: int, epoch: int | None = None) -> torch.Generator:
    """The seed rule of probe draws, as ``rows.rows_generator``'s for rows: (run seed, epoch, structure) in training,
    so a resumed run draws what an uninterrupted one would and every epoch draws afresh; (seed, structure) without an
    epoch. A stream of its own, so probes do not depend on which rows a sampler drew."""
    keys = (PROBE_STREAM, seed, structure) if epoch is None else (PROBE_STREAM, seed, epoch, structure)
    return torch.Generator().manual_seed(mixed_seed(*keys))


def draw_probes(n_atoms: int, k: int, distribution: ProbeDistribution, generator: torch.Generator,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """k probe vectors of one structure, (k, N, 3), entries i.i.d. with mean 0 and variance 1 (dimensionless)."""
    if k < 1:
        raise ValueError(f"need at least one probe vector per structure, got probes={k}")
    if distribution == "rademacher":
        signs = torch.randint(0, 2, (k, n_atoms, 3), generator=generator)
        return (2 * signs - 1).to(dtype)
    if distribution == "gaussian":
        return torch.randn((k, n_atoms, 3), generator=generator, dtype=torch.float64).to(dtype)
    raise ValueError(f"unknown probe distribution {distribution!r}; choose one of {PROBE_DISTRIBUTIONS}")


def hessian_vector_products(hessian: np.ndarray | Tensor, probes: Tensor) -> Tensor:
    """H v of one structure's Hessian (3N, 3N) eV/Å² with its probes (k, N, 3): (k, N, 3) eV/Å², in float64."""
    h = torch.as_tensor(np.asarray(hessian), dtype=torch.float64)
    flat = probes.to(torch.float64).reshape(probes.shape[0], -1)  # (k, 3N)
    return (flat @ h.T).view(probes.shape)


def jacobian_vector_products(forces: Tensor, pos: Tensor, vectors: Tensor, create_graph: bool, strategy: str,
                             symmetric: bool) -> Tensor:
    """J v = (∂F/∂r) v for each lane of ``vectors`` (L, Ntot, 3) → (L, Ntot, 3) eV/Å², by reverse mode.

    forces (Ntot, 3) eV/Å: a differentiable function of pos (Ntot, 3) Å (conservative forces built with
    create_graph=True). symmetric (a conservative student, J = −H): one VJP per lane, Jᵀv = J v. Otherwise the
    double-VJP trick: g(u) = Jᵀu is linear in a dummy cotangent u, and the VJP of g with v is (∂g/∂u)ᵀ v = J v —
    one extra backward for g, then one per lane. strategy: "loop" or "vmap" (``rows.vjp_lanes``).
    """
    if symmetric:
        return vjp_lanes(forces, pos, vectors, create_graph, strategy)
    u = torch.zeros_like(forces, requires_grad=True)
    (g,) = torch.autograd.grad(forces, pos, u, create_graph=True)
    return vjp_lanes(g, u, vectors, create_graph, strategy)
