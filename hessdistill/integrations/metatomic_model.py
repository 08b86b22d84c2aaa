"""The TorchScript module inside a deployed student: metatomic's ``ModelInterface`` around traced student cores.

metatomic (``metatomic-torch``) defines one model file that ASE (``metatomic-ase``), LAMMPS (``pair_style
metatomic``), i-PI and others load. Its module is compiled with TorchScript and must have exactly the signature
``forward(systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Labels])``, checked
against ``typing`` objects, hence the ``typing`` spellings in this file.

Engines hand every system with a full neighbour list at the student's cutoff (pairs i → j with vector
r_j − r_i + S·cell); the module joins the systems into one graph and evaluates one traced core per call. A core is
``torch.jit.trace`` of the student's ``atom_outputs`` (plus any ``extra_graph`` index function, compiled with
``torch.jit.script`` so its data-dependent sizes stay dynamic); tracing fixes the device of tensors the student
creates, so there is one core per device type the file supports.
"""

# ruff: noqa: UP006, UP007, UP035, UP045  (metatomic compares the forward annotations with typing.List/Dict/Optional)
from typing import Dict, List, Optional, Tuple

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import ModelOutput, NeighborListOptions, System
from torch import Tensor, nn

from hessdistill.data.graph import _cap_neighbors


class MetatomicStudent(nn.Module):
    """Energies (eV, interaction + per-element reference energies), per-atom energies and, for a direct-force student,
    ``non_conservative_force`` (eV/Å) of metatomic systems (lengths in Å).

    cores: traced student cores (z (N,), pos (N, 3) Å, edge_index (2, E) source → target, edge_shift (E, 3) Å) →
    (atom interaction energies (N,) eV, direct forces (N, 3) eV/Å, or (0, 3) for a conservative student), one per
    entry of ``devices`` (device types: cpu, cuda). atom_refs: (119,) eV. max_neighbors: 0 for no cap."""

    def __init__(self, cores: List[nn.Module], devices: List[str], atom_refs: Tensor, cutoff: float,
                 max_neighbors: int, direct: bool) -> None:
        super().__init__()
        self.cores = nn.ModuleList(cores)
        self.devices = devices
        self.register_buffer("atom_refs", atom_refs.to(torch.float64))
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        self.direct = direct
        self.neighbors = NeighborListOptions(cutoff=cutoff, full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.neighbors]

    @torch.jit.export
    def atom_outputs(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor) -> Tuple[Tensor, Tensor]:
        """Atom energies (N,) eV in float64, reference energies included, and direct forces (N, 3) eV/Å ((0, 3) for
        a conservative student: take −∂E/∂pos) of a graph: z (N,), pos (N, 3) Å, edge_index (2, E) source → target,
        edge_shift (E, 3) Å. The student's neighbour cap, if any, is applied here."""
        if self.max_neighbors > 0:
            distance = torch.linalg.vector_norm(pos[edge_index[0]] - pos[edge_index[1]] + edge_shift, dim=-1)
            keep = _cap_neighbors(edge_index, distance.detach().double(), pos.shape[0], self.max_neighbors)
            edge_index, edge_shift = edge_index[:, keep], edge_shift[keep]
        for k, core in enumerate(self.cores):
            if self.devices[k] == pos.device.type:
                energy, forces = core(z, pos, edge_index, edge_shift)
                return energy.to(torch.float64) + self.atom_refs[z], forces
        raise ValueError("this deployed student was not traced for device type " + pos.device.type
                         + "; deploy it again with that device among its devices")

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels]) -> Dict[str, TensorMap]:
        if len(systems) == 0:
            return {}
        z, pos, edge_index, edge_shift, structure, atom = self._join(systems)
        atom_energy, forces = self.atom_outputs(z, pos, edge_index, edge_shift)
        dtype = systems[0].positions.dtype
        results: Dict[str, TensorMap] = {}
        if "energy" in outputs:
            keep = self._selected(selected_atoms, structure, atom)
            values = atom_energy[keep].to(dtype)
            if outputs["energy"].sample_kind == "atom":
                samples = Labels(["system", "atom"], torch.stack([structure[keep], atom[keep]], dim=1).to(torch.int32))
                block = TensorBlock(values=values[:, None], samples=samples, components=[],
                                    properties=Labels(["energy"], torch.zeros(1, 1, dtype=torch.int32,
                                                                              device=pos.device)))
            else:
                totals = torch.zeros(len(systems), dtype=dtype, device=pos.device).index_add(0, structure[keep], values)
                samples = Labels(["system"], torch.arange(len(systems), dtype=torch.int32, device=pos.device)[:, None])
                block = TensorBlock(values=totals[:, None], samples=samples, components=[],
                                    properties=Labels(["energy"], torch.zeros(1, 1, dtype=torch.int32,
                                                                              device=pos.device)))
            results["energy"] = TensorMap(Labels("_", torch.zeros(1, 1, dtype=torch.int32, device=pos.device)),
                                          [block])
        if "non_conservative_force" in outputs:
            if not self.direct:
                raise ValueError("non_conservative_force: this student's forces are conservative, −∂E/∂r")
            samples = Labels(["system", "atom"], torch.stack([structure, atom], dim=1).to(torch.int32))
            xyz = Labels(["xyz"], torch.arange(3, dtype=torch.int32, device=pos.device)[:, None])
            block = TensorBlock(values=forces.to(dtype)[:, :, None], samples=samples, components=[xyz],
                                properties=Labels(["non_conservative_force"],
                                                  torch.zeros(1, 1, dtype=torch.int32, device=pos.device)))
            results["non_conservative_force"] = TensorMap(
                Labels("_", torch.zeros(1, 1, dtype=torch.int32, device=pos.device)), [block])
        return results

    def _join(self, systems: List[System]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """All systems as one graph: z, pos, edge_index (source = second atom of each pair, target = first),
        edge_shift = S·cell, and each atom's system and index within it."""
        zs: List[Tensor] = []
        positions: List[Tensor] = []
        edges: List[Tensor] = []
        shifts: List[Tensor] = []
        structures: List[Tensor] = []
        atoms: List[Tensor] = []
        offset = 0
        for k, system in enumerate(systems):
            pairs = system.get_neighbor_list(self.neighbors).samples.values
            n = system.positions.shape[0]
            zs.append(system.types.to(torch.long))
            positions.append(system.positions)
            edges.append(torch.stack([pairs[:, 1], pairs[:, 0]]).to(torch.long) + offset)
            shifts.append(pairs[:, 2:5].to(system.positions.dtype) @ system.cell)
            structures.append(torch.full((n,), k, dtype=torch.long, device=system.positions.device))
            atoms.append(torch.arange(n, device=system.positions.device))
            offset += n
        return (torch.cat(zs), torch.cat(positions), torch.cat(edges, dim=1), torch.cat(shifts),
                torch.cat(structures), torch.cat(atoms))

    def _selected(self, selected_atoms: Optional[Labels], structure: Tensor, atom: Tensor) -> Tensor:
        """Boolean mask of the atoms whose energies count (all, unless the engine selects some, as LAMMPS does to
        leave out ghost atoms)."""
        if selected_atoms is None:
            return torch.ones_like(structure, dtype=torch.bool)
        chosen = selected_atoms.values.to(torch.long)
        key = structure * (int(atom.max()) + 1) + atom
        wanted = chosen[:, 0] * (int(atom.max()) + 1) + chosen[:, 1]
        return torch.isin(key, wanted)
