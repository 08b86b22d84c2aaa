"""ASE calculator around any hessdistill model that has ``energy_forces(batch)`` (teachers, students); stress
too for periodic structures when the model has ``energy_forces_stress`` (students)."""

from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from torch_geometric.data import Batch

from hessdistill.data.structures import Structure
from hessdistill.devices import module_device, resolve_device


class TorchCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and, for periodic cells, stress (eV/Å³, Voigt xx yy zz yz xz xy) from
    ``model.energy_forces(batch) -> ((B,), (Ntot, 3))`` / ``model.energy_forces_stress(batch)``.

    device: where the model runs (``hessdistill.devices``: auto, cpu, cuda, cuda:<i>; None: where it already is);
    every structure's batch is built on that device."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model if device is None else model.to(resolve_device(device))
        self.device = module_device(self.model)
        self.dtype = dtype or next(model.parameters()).dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        batch = Batch.from_data_list([Structure.from_atoms(self.atoms).to_data(self.dtype)]).to(self.device)
        if "stress" in properties:
            if not self.atoms.pbc.all() or not hasattr(self.model, "energy_forces_stress"):
                raise PropertyNotImplementedError("stress needs a periodic cell and a student model")
            energy, forces, stress = self.model.energy_forces_stress(batch)
            s = stress[0].cpu().double().numpy()
            self.results["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        else:
            energy, forces = self.model.energy_forces(batch)
        self.results.update(energy=float(energy.detach()[0]), free_energy=float(energy.detach()[0]),
                            forces=forces.detach().cpu().double().numpy())
