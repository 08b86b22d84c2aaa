"""ASE calculator around any hessdistill model that has ``energy_forces(batch)`` (teachers, students): energies,
forces, per-atom energies and stress for students, and Hessians of both."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from torch_geometric.data import Batch

from hessdistill.data.structures import Structure
from hessdistill.devices import module_device, resolve_device
from hessdistill.hessian.rows import force_jacobian_rows
from hessdistill.models.elements import check_elements


class TorchCalculator(Calculator):
    """Energy (eV), forces (eV/Å), per-atom energies (``energies``, eV, students) and, for periodic cells, stress
    (eV/Å³, Voigt xx yy zz yz xz xy) from ``model.energy_forces(batch) -> ((B,), (Ntot, 3))``,
    ``model.atom_energies(batch)`` and ``model.energy_forces_stress(batch)``; the Hessian on request
    (``get_hessian``). Energies are float64 sums whatever the model's dtype (meV resolution on totals of ~10⁴ eV).

    device: where the model runs (``hessdistill.devices``: auto, cpu, cuda, cuda:<i>; None: where it already is);
    every structure's batch is built on that device. A structure with an element the student was not trained on is
    refused (``models.elements.UnseenElementError``) unless ``allow_unseen_elements``."""

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                 allow_unseen_elements: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model if device is None else model.to(resolve_device(device))
        self.device = module_device(self.model)
        self.dtype = dtype or next(model.parameters()).dtype
        self.allow_unseen_elements = allow_unseen_elements

    def _batch(self, atoms) -> Batch:
        batch = Batch.from_data_list([Structure.from_atoms(atoms).to_data(self.dtype)]).to(self.device)
        check_elements(self.model, batch.z, atoms.get_chemical_formula(), self.allow_unseen_elements)
        return batch

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        batch = self._batch(self.atoms)
        if "energies" in properties:
            if not hasattr(self.model, "atom_energies"):
                raise PropertyNotImplementedError("per-atom energies need a student model")
            self.results["energies"] = self.model.atom_energies(batch).cpu().numpy()
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

    def get_hessian(self, atoms=None) -> np.ndarray:
        """The model's (3N, 3N) Hessian at ``atoms`` (default: the calculator's), eV/Å², row j = 3·atom + axis."""
        return model_hessian(self.model, self.atoms if atoms is None else atoms, self._batch)


def model_hessian(model, atoms, make_batch=None) -> np.ndarray:
    """(3N, 3N) eV/Å² Hessian of a model at ``atoms``: a teacher's ``hessians``, or for a student −∂F/∂r from all
    3N rows of its force Jacobian (symmetrised: a direct-force student's Jacobian need not be symmetric).
    make_batch: atoms → batch on the model's device (default: in the model's dtype, on its device)."""
    if make_batch is None:
        dtype = next(model.parameters()).dtype
        batch = Batch.from_data_list([Structure.from_atoms(atoms).to_data(dtype)]).to(module_device(model))
        check_elements(model, batch.z, atoms.get_chemical_formula())
    else:
        batch = make_batch(atoms)
    if hasattr(model, "hessians"):
        return model.hessians(batch).hessians[0].cpu().double().numpy()
    with torch.enable_grad():
        out = model(batch, create_graph=model.force_mode == "conservative")
        rows = torch.arange(3 * len(atoms), device=batch.pos.device)[None]
        jac = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="auto")
    h = -jac.detach().reshape(3 * len(atoms), -1).cpu().double().numpy()
    return 0.5 * (h + h.T)
