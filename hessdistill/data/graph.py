"""Radius graphs through vesin (``vesin-torch``: CPU and CUDA tensors; molecules, periodic and mixed-pbc cells).

Edges are (source j → target i) in PyG order, ``edge_index`` (2, E), with ``edge_shift`` (E, 3) Å so that the
edge vector r_ij = pos[j] − pos[i] + shift (zero shift for non-periodic structures). An atom is its own neighbour
only through a periodic image (shift ≠ 0). vesin only says which pairs are within the cutoff (i, j and the integer
cell shifts S); models compute edge vectors from positions themselves, so gradients w.r.t. positions (and the
cell, through shift = S @ cell) flow through torch, not through vesin. vesin has no batched API: a batch's
molecules share one call (moved far apart), each periodic structure takes one call.

Neighbour cap: ``max_neighbors=None`` (default) keeps every pair within the cutoff. An int keeps the
``max_neighbors`` nearest sources of each target: opt-in only, because which neighbours are kept changes
abruptly as atoms move, so the energy surface becomes discontinuous (bad for Hessians and NVE).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from vesin_torch import NeighborList


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


def _neighbor_list(cutoff: float) -> NeighborList:
    # vesin's default thread count is every core; follow torch's budget instead (1 in DataLoader workers)
    return NeighborList(cutoff=cutoff, full_list=True, n_threads=torch.get_num_threads())


def _vesin_edges(calculator: NeighborList, pos: Tensor, cell: Tensor, pbc: Tensor) -> tuple[Tensor, Tensor]:
    """One structure: pos (N, 3) Å, cell (3, 3) Å (rows are lattice vectors; ignored along non-periodic axes),
    pbc (3,) bool. Returns edge_index (2, E) int64 and edge_shift (E, 3) Å, on the device and dtype of pos."""
    if pos.shape[0] == 0:  # vesin rejects an empty points array (a NULL pointer)
        return torch.empty(2, 0, dtype=torch.long, device=pos.device), pos.new_empty(0, 3)
    i, j, cell_shift = calculator.compute(pos.detach().double(), cell.detach().to(pos.device, torch.float64),
                                          pbc.to(pos.device, torch.bool), quantities="ijS")
    # vesin's pair (i, j) has r_ij = pos[j] − pos[i] + S @ cell: j is the PyG source, i the target
    return torch.stack([j, i]), cell_shift.to(pos.dtype) @ cell.to(pos)


def _capped(edge_index: Tensor, shift: Tensor, pos: Tensor, max_neighbors: int | None) -> tuple[Tensor, Tensor]:
    """The edges left by ``_cap_neighbors`` (all of them when ``max_neighbors`` is None)."""
    if max_neighbors is None:
        return edge_index, shift
    # float64: _cap_neighbors sorts by target · (max dist + 1) + dist, and a batch has up to ~1e5 targets
    pos64 = pos.detach().double()
    dist = (pos64[edge_index[0]] - pos64[edge_index[1]] + shift.detach().double()).norm(dim=-1)
    keep = _cap_neighbors(edge_index, dist, pos.shape[0], max_neighbors)
    return edge_index[:, keep], shift[keep]


def _packed_apart(pos: Tensor, graph: Tensor, num_graphs: int, gap: float) -> Tensor:
    """Positions (N, 3) Å of molecules (``graph`` (N,) int64: each atom's molecule, < ``num_graphs``) moved
    rigidly into the slots of a cubic grid whose pitch leaves at least ``gap`` Å between the bounding boxes of any
    two molecules, so that one neighbour-list call on all of them finds no pair across molecules when gap > cutoff.
    A grid rather than a line keeps the cloud compact and the coordinates small (hundreds of Å for thousands of
    molecules), so the float64 round-off of the move stays far below 1e-9 Å."""
    index = graph[:, None].expand(-1, 3)
    low = pos.new_zeros(num_graphs, 3).scatter_reduce(0, index, pos, "amin", include_self=False)
    high = pos.new_zeros(num_graphs, 3).scatter_reduce(0, index, pos, "amax", include_self=False)
    pitch = (high - low).amax(dim=0) + gap
    side = math.ceil(num_graphs ** (1 / 3))  # side**3 >= num_graphs even when the float root is a bit off
    g = torch.arange(num_graphs, device=pos.device)
    slot = torch.stack([g % side, g // side % side, g // side**2], dim=1).to(pos.dtype) * pitch
    return pos - low[graph] + slot[graph]


def _molecule_edges(calculator: NeighborList, cutoff: float, pos: Tensor, graph: Tensor, num_graphs: int) -> Tensor:
    """All molecules of a batch in one vesin call (``calculator`` at ``cutoff`` Å): pos (N, 3) Å and graph (N,)
    of their atoms only; returns edge_index (2, E) int64 into these N atoms (their shifts are zero)."""
    # any gap > cutoff keeps molecules apart; twice the cutoff leaves a wide margin over round-off
    packed = _packed_apart(pos.detach().double(), graph, num_graphs, gap=2 * cutoff)
    no_cell, no_pbc = packed.new_zeros(3, 3), torch.zeros(3, dtype=torch.bool, device=pos.device)
    return _vesin_edges(calculator, packed, no_cell, no_pbc)[0]


def radius_graph(pos: Tensor, cutoff: float, max_neighbors: int | None = None, cell: Tensor | None = None,
                 pbc: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Edges within ``cutoff`` Å of one structure: pos (N, 3) Å, cell (3, 3) Å, pbc (3,) bool (None: a molecule).

    Any pbc combination is supported; a periodic axis needs a non-zero cell vector. Returns edge_index (2, E)
    int64 and edge_shift (E, 3) Å on the device and dtype of pos.
    """
    cell = pos.new_zeros(3, 3) if cell is None else cell
    pbc = torch.zeros(3, dtype=torch.bool) if pbc is None else pbc
    edge_index, shift = _vesin_edges(_neighbor_list(cutoff), pos, cell, pbc)
    return _capped(edge_index, shift, pos, max_neighbors)


def batch_radius_graph(batch, cutoff: float, max_neighbors: int | None = None) -> tuple[Tensor, Tensor]:
    """Radius graphs of every structure of a PyG batch (pos (Ntot, 3) Å, batch (Ntot,), ptr (B+1,),
    cell (B, 3, 3) Å, pbc (B, 3) bool), joined: edge_index (2, E) int64 into the batch's atoms and edge_shift
    (E, 3) Å, on the device and dtype of ``batch.pos``. ``max_neighbors`` as in ``radius_graph``.

    vesin 0.6 computes one system per call (no batched API): all molecules (no periodic axis) go through one call,
    packed far apart (``_packed_apart``); each periodic structure takes its own call. Edges are grouped that way
    (molecules first), not by structure.
    """
    calculator = _neighbor_list(cutoff)
    pos, periodic = batch.pos, batch.pbc.any(dim=1)
    in_molecule = torch.nonzero(~periodic[batch.batch]).squeeze(1)
    molecule_edges = _molecule_edges(calculator, cutoff, pos[in_molecule], batch.batch[in_molecule], batch.num_graphs)
    edges = [in_molecule[molecule_edges]]
    shifts = [pos.new_zeros(edges[0].shape[1], 3)]
    ptr = batch.ptr.tolist()
    for g in torch.nonzero(periodic).squeeze(1).tolist():
        edge_index, shift = _vesin_edges(calculator, pos[ptr[g]:ptr[g + 1]], batch.cell[g], batch.pbc[g])
        edges.append(edge_index + ptr[g])
        shifts.append(shift)
    return _capped(torch.cat(edges, dim=1), torch.cat(shifts), pos, max_neighbors)


class TiledGraph(NamedTuple):
    """``copies`` copies of a batch's graph side by side, as ``ForceField.outputs`` reads a batch: z (c·Ntot,),
    batch (c·Ntot,) structure index (copy k's structure i is k·B + i), num_graphs c·B, edge_index (2, c·E) and
    edge_shift (c·E, 3) Å. Atom a of copy k is row k·Ntot + a."""

    z: Tensor
    batch: Tensor
    num_graphs: int
    edge_index: Tensor
    edge_shift: Tensor


def tile_graph(batch, copies: int) -> TiledGraph:
    """The graph of a batch (with ``edge_index``/``edge_shift``) repeated ``copies`` times, for evaluating a model at
    several displaced copies of the same structures in one forward (finite-difference Hessian rows). The edges stay
    those of the undisplaced batch: the copies are displaced by far less than any smooth cutoff envelope resolves."""
    n_atoms, n_edges = batch.z.shape[0], batch.edge_index.shape[1]
    copy = torch.arange(copies, device=batch.z.device)
    edge_offset = (copy * n_atoms).repeat_interleave(n_edges)
    return TiledGraph(z=batch.z.repeat(copies),
                      batch=(batch.batch[None, :] + batch.num_graphs * copy[:, None]).reshape(-1),
                      num_graphs=copies * batch.num_graphs,
                      edge_index=batch.edge_index.repeat(1, copies) + edge_offset,
                      edge_shift=batch.edge_shift.repeat(copies, 1))
