"""Radius graphs of a batch: ``batch_radius_graph`` (vesin) against the approach it replaced, in one run.

The old approach looped over the structures of a batch: dense ``torch.cdist`` for molecules and
``ase.neighborlist.primitive_neighbor_list`` for periodic cells (neither capped here, so both sides build the
same graph; the edge counts are checked to agree). Cases: 32 demo molecules (5–12 atoms) at cutoffs 5 and 12 Å,
and 8 rattled bulk Si 3×3×3 supercells (216 atoms) at 5 Å. Machines are shared: compare the ratios of one run.

    python benchmarks/graph_building.py [--device cuda] [--repeat 20]
"""

from __future__ import annotations

import argparse

import ase.io
import torch
from ase.build import bulk
from ase.neighborlist import primitive_neighbor_list
from torch_geometric.data import Batch

from hessdistill.config import dataset_path
from hessdistill.data.graph import batch_radius_graph
from hessdistill.data.structures import Structure
from hessdistill.evaluation.speed import timed

DEMO = dataset_path("demo/hcno_wb97x_631gd.extxyz")


def cdist_edges(pos: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(pos, pos)
    d.fill_diagonal_(float("inf"))
    i, j = torch.nonzero(d < cutoff, as_tuple=True)
    return torch.stack([j, i]), pos.new_zeros(len(i), 3)


def ase_edges(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
              cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    i, j, cell_shift = primitive_neighbor_list("ijS", pbc.cpu().numpy(), cell.cpu().double().numpy(),
                                               pos.cpu().double().numpy(), cutoff, self_interaction=False)
    edge_index = torch.stack([torch.as_tensor(j), torch.as_tensor(i)]).to(pos.device)
    return edge_index, torch.as_tensor(cell_shift, dtype=pos.dtype, device=pos.device) @ cell


def old_batch_radius_graph(batch, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The replaced per-structure loop: cdist for molecules, ase.neighborlist for periodic cells."""
    edges, shifts = [], []
    for g in range(batch.num_graphs):
        a, b = int(batch.ptr[g]), int(batch.ptr[g + 1])
        pos = batch.pos[a:b].detach()
        periodic = bool(batch.pbc[g].any())
        e, s = ase_edges(pos, batch.cell[g], batch.pbc[g], cutoff) if periodic else cdist_edges(pos, cutoff)
        edges.append(e + a)
        shifts.append(s)
    return torch.cat(edges, dim=1), torch.cat(shifts)


def demo_molecules(n: int) -> Batch:
    frames = ase.io.read(DEMO, ":")[::5][:n]  # every 5th conformer: all six molecules
    return Batch.from_data_list([Structure.from_atoms(atoms).to_data() for atoms in frames])


def silicon_supercells(n: int, repeat: int = 3) -> Batch:
    cells = []
    for seed in range(n):
        atoms = bulk("Si", cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=seed)
        cells.append(Structure.from_atoms(atoms).to_data())
    return Batch.from_data_list(cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    cases = [("32 demo molecules", demo_molecules(32), 5.0), ("32 demo molecules", demo_molecules(32), 12.0),
             ("8 Si 3x3x3 cells", silicon_supercells(8), 5.0)]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'batch':18s} {'atoms':>6s} {'cutoff':>7s} {'edges':>7s} {'old ms':>8s} {'vesin ms':>9s} {'speed-up':>9s}")
    for name, batch, cutoff in cases:
        batch = batch.to(device)
        n_old = old_batch_radius_graph(batch, cutoff)[0].shape[1]
        n_new = batch_radius_graph(batch, cutoff)[0].shape[1]
        assert n_old == n_new, f"{name}, {cutoff} Å: {n_old} edges before, {n_new} with vesin"
        old = timed(lambda: old_batch_radius_graph(batch, cutoff), device, args.repeat)
        new = timed(lambda: batch_radius_graph(batch, cutoff), device, args.repeat)
        print(f"{name:18s} {batch.num_nodes:6d} {cutoff:6.1f}Å {n_new:7d} {1e3 * old:8.2f} {1e3 * new:9.2f} "
              f"{old / new:8.2f}x")


if __name__ == "__main__":
    main()
