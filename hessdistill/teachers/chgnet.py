"""CHGNet (Deng et al. 2023; MPtrj-trained materials foundation model) as a teacher, through autograd.

Weights ship in the ``chgnet`` wheel (CHGNet 0.3.0), so this teacher runs offline. CHGNet builds its crystal
graph from fractional coordinates; substituting frac = r · L⁻¹ computed from our positions makes its energy a
differentiable function of them, so forces and Hessians come from the generic autograd path. Periodic
structures only. CHGNet computes in float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hessdistill.teachers.base import AutogradTeacher


class CHGNetTeacher(AutogradTeacher):
    """model: a CHGNet checkpoint file, or None for the weights in the chgnet wheel; name: store label."""

    level_of_theory = "PBE/PBE+U (MPtrj), CHGNet"
    code_argument = "model"  # CHGNet.from_file unpickles (torch.load with weights_only=False); None: bundled weights

    def __init__(self, model: str | None = None, name: str = "chgnet") -> None:
        super().__init__()
        try:
            from chgnet.model import CHGNet
        except ImportError as exc:
            raise ImportError("the CHGNet teacher needs chgnet: pip install 'hessdistill[materials]'") from exc

        if model is not None and not Path(model).expanduser().is_file():
            raise FileNotFoundError(f"CHGNet checkpoint not found: {model}")
        self.model = CHGNet.load(verbose=False) if model is None else CHGNet.from_file(str(Path(model).expanduser()))
        self.name = name
        self.freeze()

    @property
    def elements(self) -> frozenset[int]:
        return frozenset(range(1, self.model.atom_embedding.embedding.num_embeddings + 1))

    def energy(self, batch) -> Tensor:
        """(B,) eV: CHGNet's per-atom energy times the atom count."""
        from pymatgen.io.ase import AseAtomsAdaptor

        from hessdistill.data.structures import Structure

        if not bool(batch.pbc.all()):
            raise ValueError(f"teacher {self.name}: CHGNet needs periodic structures (pbc on all three axes)")
        graphs = []
        for g in range(batch.num_graphs):
            a, b = int(batch.ptr[g]), int(batch.ptr[g + 1])
            atoms = Structure(z=batch.z[a:b].cpu().numpy(), positions=batch.pos[a:b].detach().cpu().double().numpy(),
                              cell=batch.cell[g].cpu().double().numpy(), pbc=batch.pbc[g].cpu().numpy()).to_atoms()
            graph = self.model.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(batch.pos.device)
            graph.atom_frac_coord = batch.pos[a:b] @ torch.linalg.inv(graph.lattice)  # differentiable in pos
            graphs.append(graph)
        per_atom = self.model(graphs, task="e")["e"]
        return per_atom * (batch.ptr[1:] - batch.ptr[:-1]).to(per_atom)
