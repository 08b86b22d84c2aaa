"""Radius graphs with pluggable backends.

Edges are (source j → target i) in PyG order, ``edge_index`` (2, E), with ``edge_shift`` (E, 3) Å so that the
edge vector r_ij = pos[j] − pos[i] + shift (zero shift for non-periodic structures). Models compute edge
vectors from positions themselves, so gradients w.r.t. positions flow through them.

Backends: "torch" (dense, non-periodic; no extra dependency), "torch_cluster" (optional extra),
"ase" (ase.neighborlist, periodic cells); "auto" picks ase for periodic structures, else torch_cluster when
importable, else torch. Every backend keeps at most ``max_neighbors`` nearest neighbours per atom and never
drops an edge silently: torch_cluster is called with the cap set explicitly.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "torch_cluster", "ase")


def _cap_neighbors(edge_index: Tensor, dist: Tensor, n_atoms: int, max_neighbors: int) -> Tensor:
    """Keep the ``max_neighbors`` nearest sources of every target; returns a boolean mask over edges."""
    target = edge_index[1]
    counts = torch.bincount(target, minlength=n_atoms)
    if counts.numel() == 0 or int(counts.max()) <= max_neighbors:
        return torch.ones_like(target, dtype=torch.bool)
    order = torch.argsort(target * (dist.max() + 1.0) + dist)  # by target, then by distance
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - start[target[order]]
    return rank < max_neighbors


def _torch_radius(pos: Tensor, cutoff: float) -> Tensor:
    d = torch.cdist(pos, pos)
    d.fill_diagonal_(float("inf"))
    i, j = torch.nonzero(d < cutoff, as_tuple=True)
    return torch.stack([j, i])


def _cluster_radius(pos: Tensor, cutoff: float, max_neighbors: int) -> Tensor:
    import torch_cluster

    return torch_cluster.radius_graph(pos, r=cutoff, loop=False, max_num_neighbors=max(max_neighbors, pos.shape[0]))


def _ase_radius(pos: Tensor, cell: Tensor, pbc: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    from ase.neighborlist import primitive_neighbor_list

    i, j, shift = primitive_neighbor_list("ijS", pbc.cpu().numpy(), cell.detach().cpu().double().numpy(),
                                          pos.cpu().double().numpy(), cutoff, self_interaction=False)
    edge_index = torch.as_tensor(np.stack([j, i]), dtype=torch.long, device=pos.device)
    return edge_index, torch.as_tensor(shift, dtype=pos.dtype, device=pos.device) @ cell.to(pos)


def radius_graph(pos: Tensor, cutoff: float, max_neighbors: int = 50, cell: Tensor | None = None,
                 pbc: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Edges within ``cutoff`` Å of one structure. pos (N, 3) Å, cell (3, 3), pbc (3,).

    Returns edge_index (2, E) int64 and edge_shift (E, 3) Å.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown radius-graph backend {backend!r}; choose one of {BACKENDS}")
    periodic = pbc is not None and bool(pbc.any())
    if backend == "auto":
        backend = "ase" if periodic else ("torch_cluster" if importlib.util.find_spec("torch_cluster") else "torch")
    if periodic and backend != "ase":
        raise ValueError(f"backend {backend!r} handles non-periodic structures only; use 'ase' or 'auto'")
    pos = pos.detach()
    if backend == "ase":
        edge_index, shift = _ase_radius(pos, cell if cell is not None else torch.zeros(3, 3), pbc if pbc is not None
                                        else torch.zeros(3, dtype=torch.bool), cutoff)
    else:
        edge_index = _torch_radius(pos, cutoff) if backend == "torch" else _cluster_radius(pos, cutoff, max_neighbors)
        shift = pos.new_zeros(edge_index.shape[1], 3)
    dist = (pos[edge_index[0]] - pos[edge_index[1]] + shift).norm(dim=-1)
    keep = _cap_neighbors(edge_index, dist, pos.shape[0], max_neighbors)
    return edge_index[:, keep], shift[keep]


def batch_radius_graph(batch, cutoff: float, max_neighbors: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Radius graphs of every structure of a PyG batch (pos (Ntot, 3) Å, ptr, cell (B, 3, 3), pbc (B, 3)), joined:
    edge_index (2, E) into the batch's atoms and edge_shift (E, 3) Å, on the device and dtype of ``batch.pos``."""
    edges, shifts = [], []
    for g in range(batch.num_graphs):
        a, b = int(batch.ptr[g]), int(batch.ptr[g + 1])
        e, sh = radius_graph(batch.pos[a:b].detach(), cutoff, max_neighbors, batch.cell[g], batch.pbc[g], backend)
        edges.append(e + a)
        shifts.append(sh)
    return torch.cat(edges, dim=1).to(batch.pos.device), torch.cat(shifts).to(batch.pos)
