"""Deployment export of a student with ``torch.export``: an ATen program file that needs neither this package's
model code nor Hydra to run, and the small wrapper that builds its graph inputs and turns it back into energies
and forces.

The program maps (z (N,), pos (N, 3) Å, edge_index (2, E), edge_shift (E, 3) Å) to atom interaction energies (N,)
eV (the per-element reference energies travel in the file's metadata and are added in float64) and, for a
direct-force student, forces (N, 3) eV/Å; a conservative student's forces are −∂U/∂r of the program's output by
autograd at run time. N and E are dynamic. A representation whose graph goes beyond edges declares
``extra_graph``, the dotted name of a function (edge_index, vectors) → tuple of index tensors (GemNet: its
triplets): the program takes those as further inputs, with dynamic sizes, and ``ExportedStudent`` computes them
as it does the radius graph. PaiNN, SchNet, GemNet and eSCN export; the MACE student does not yet.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from hessdistill.data.graph import batch_radius_graph
from hessdistill.models.base import sum_energies

META = "hessdistill.json"


class AtomEnergies(nn.Module):
    """A ForceField's ``atom_outputs`` as a function of plain tensors (what gets exported)."""

    def __init__(self, student) -> None:
        super().__init__()
        self.student = student

    def forward(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor, *graph: Tensor):
        """graph: the representation's ``extra_graph`` index tensors, if it declares one."""
        atom_energy, forces, _ = self.student.atom_outputs(z, pos, edge_index, edge_shift, graph=graph or None)
        return (atom_energy,) if forces is None else (atom_energy, forces)


def extra_graph(name: str | None, edge_index: Tensor, vectors: Tensor) -> tuple[Tensor, ...]:
    """The index tensors a representation's ``extra_graph`` function (dotted name; None: none) makes for these
    edges (2, E) and vectors (E, 3)."""
    if name is None:
        return ()
    module, function = name.rsplit(".", 1)
    return tuple(getattr(importlib.import_module(module), function)(edge_index, vectors))


def export_student(student, path: str | Path, example: Batch) -> Path:
    """Export ``student`` (eval mode, its dtype and device) to ``path`` with dynamic atom and edge counts.
    ``example``: a batch of at least two structures to trace with."""
    from torch.export import Dim, export

    student = student.eval()
    example = student.ensure_graph(example)
    dtype = student.atom_refs.dtype
    atoms, edges = Dim("atoms", min=2), Dim("edges", min=2)
    args = (example.z, example.pos.to(dtype), example.edge_index, example.edge_shift.to(dtype))
    graph_name = getattr(student.representation, "extra_graph", None)
    graph = extra_graph(graph_name, example.edge_index, _vectors(*args[1:]))
    dims = [{0: atoms}, {0: atoms}, {1: edges}, {0: edges}]
    if graph:  # *graph is one more input: index tensors whose lengths (GemNet: T, T, T, E, K) export relates itself
        dims.append(tuple({0: Dim.AUTO} for _ in graph))
    program = export(AtomEnergies(student), args + graph, dynamic_shapes=tuple(dims))
    meta = {"force_mode": student.force_mode, "cutoff": student.cutoff, "max_neighbors": student.max_neighbors,
            "dtype": str(dtype).removeprefix("torch."), "extra_graph": graph_name,
            "atom_refs": student.atom_refs.double().tolist()}
    path = Path(path)
    torch.export.save(program, path, extra_files={META: json.dumps(meta)})
    return path


def _vectors(pos: Tensor, edge_index: Tensor, edge_shift: Tensor) -> Tensor:
    """Edge vectors r_src − r_dst + shift (E, 3) Å, detached: what the index arithmetic of ``extra_graph`` needs."""
    return (pos[edge_index[0]] - pos[edge_index[1]] + edge_shift).detach()


class ExportedStudent(nn.Module):
    """An exported student with the ``energy_forces(batch)`` protocol of students and teachers (so
    ``TorchCalculator`` and the evaluation suite accept it). Builds the radius graph itself."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        extra = {META: ""}
        self.program = torch.export.load(Path(path), extra_files=extra).module()
        meta = json.loads(extra[META])
        self.force_mode, self.cutoff, self.max_neighbors = meta["force_mode"], meta["cutoff"], meta["max_neighbors"]
        self.extra_graph = meta.get("extra_graph")
        self.register_buffer("atom_refs", torch.tensor(meta["atom_refs"], dtype=torch.float64))
        self.register_buffer("_dtype_probe", torch.zeros((), dtype=getattr(torch, meta["dtype"])))

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        pos = batch.pos.to(self._dtype_probe.dtype).detach().requires_grad_(self.force_mode == "conservative")
        edge_index, edge_shift = batch_radius_graph(batch, self.cutoff, self.max_neighbors)
        graph = extra_graph(self.extra_graph, edge_index, _vectors(pos, edge_index, edge_shift.to(pos)))
        with torch.enable_grad():
            out = self.program(batch.z, pos, edge_index, edge_shift.to(pos), *graph)
            energy = sum_energies(out[0], batch.batch, batch.num_graphs) + sum_energies(
                self.atom_refs[batch.z], batch.batch, batch.num_graphs)
            if self.force_mode == "conservative":
                (grad,) = torch.autograd.grad(energy.sum(), pos)
                return energy.detach(), -grad
        return energy.detach(), out[1].detach()
