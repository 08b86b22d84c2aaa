"""Deployment export of a student with ``torch.export``: an ATen program file that needs neither this package's
model code nor Hydra to run, and the small wrapper that turns it back into energies and forces.

The program maps (z (N,), pos (N, 3) Å, edge_index (2, E), edge_shift (E, 3) Å) to atom energies (N,) eV and, for
a direct-force student, forces (N, 3) eV/Å; a conservative student's forces are −∂U/∂r of the program's output by
autograd at run time. N and E are dynamic. PaiNN, SchNet and eSCN export; students whose graph construction is
data-dependent inside the model (GemNet's triplets, MACE) cannot be exported this way yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from hessdistill.data.graph import batch_radius_graph

META = "hessdistill.json"


class AtomEnergies(nn.Module):
    """A ForceField's ``atom_outputs`` as a function of plain tensors (what gets exported)."""

    def __init__(self, student) -> None:
        super().__init__()
        self.student = student

    def forward(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor):
        atom_energy, forces, _ = self.student.atom_outputs(z, pos, edge_index, edge_shift)
        return (atom_energy,) if forces is None else (atom_energy, forces)


def export_student(student, path: str | Path, example: Batch) -> Path:
    """Export ``student`` (eval mode, its dtype and device) to ``path`` with dynamic atom and edge counts.
    ``example``: a batch of at least two structures to trace with."""
    from torch.export import Dim, export

    student = student.eval()
    example = student.ensure_graph(example)
    atoms, edges = Dim("atoms", min=2), Dim("edges", min=2)
    args = (example.z, example.pos.to(student.atom_refs.dtype), example.edge_index, example.edge_shift.to(student.atom_refs.dtype))
    program = export(AtomEnergies(student), args, dynamic_shapes={"z": {0: atoms}, "pos": {0: atoms},
                                                                   "edge_index": {1: edges}, "edge_shift": {0: edges}})
    meta = {"force_mode": student.force_mode, "cutoff": student.cutoff, "max_neighbors": student.max_neighbors,
            "dtype": str(student.atom_refs.dtype).removeprefix("torch.")}
    path = Path(path)
    torch.export.save(program, path, extra_files={META: json.dumps(meta)})
    return path


class ExportedStudent(nn.Module):
    """An exported student with the ``energy_forces(batch)`` protocol of students and teachers (so
    ``TorchCalculator`` and the evaluation suite accept it). Builds the radius graph itself."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        extra = {META: ""}
        self.program = torch.export.load(Path(path), extra_files=extra).module()
        meta = json.loads(extra[META])
        self.force_mode, self.cutoff, self.max_neighbors = meta["force_mode"], meta["cutoff"], meta["max_neighbors"]
        self.register_buffer("_dtype_probe", torch.zeros((), dtype=getattr(torch, meta["dtype"])))

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        pos = batch.pos.to(self._dtype_probe.dtype).detach().requires_grad_(self.force_mode == "conservative")
        edge_index, edge_shift = batch_radius_graph(batch, self.cutoff, self.max_neighbors)
        with torch.enable_grad():
            out = self.program(batch.z, pos, edge_index, edge_shift.to(pos))
            energy = torch.zeros(batch.num_graphs, dtype=pos.dtype).index_add(0, batch.batch, out[0])
            if self.force_mode == "conservative":
                (grad,) = torch.autograd.grad(energy.sum(), pos)
                return energy.detach(), -grad
        return energy.detach(), out[1].detach()
