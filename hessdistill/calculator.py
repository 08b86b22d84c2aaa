"""ASE calculator around any hessdistill model that has ``energy_forces(batch)`` (teachers, students)."""

from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, all_changes
from torch_geometric.data import Batch

from hessdistill.data.structures import Structure


class TorchCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) from ``model.energy_forces(batch) -> ((B,), (Ntot, 3))``."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model, dtype: torch.dtype | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.dtype = dtype or next(model.parameters()).dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        batch = Batch.from_data_list([Structure.from_atoms(self.atoms).to_data(self.dtype)])
        energy, forces = self.model.energy_forces(batch)
        self.results = {"energy": float(energy.detach()[0]), "forces": forces.detach().cpu().double().numpy()}
