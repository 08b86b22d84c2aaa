"""torch-sim (``torch-sim-atomistic``) adapter: any model with the ``energy_forces(batch)`` protocol — a student, a
teacher, a deployed student file (``DeployedModel``) — as a torch-sim ``ModelInterface``, so torch-sim's integrators
run many replicas of a structure, or many structures, at once on one device.

torch-sim's metal units are ASE's: positions Å, energies eV, masses amu, time in units of Å·√(amu/eV) (≈ 10.18 fs;
``ase.units.fs`` is the same conversion), so momenta and timesteps carry over from ASE unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_sim.models.interface import ModelInterface

from hessdistill.devices import module_device
from hessdistill.models.elements import check_elements


def model_dtype(model) -> torch.dtype:
    """The float type a model computes in (its ``dtype`` attribute, as teachers have, else its parameters')."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def state_batch(state, dtype: torch.dtype) -> Batch:
    """A torch-sim ``SimState`` as the PyG batch models read: z (N,), pos (N, 3) Å in ``dtype``, batch (N,),
    ptr (B+1,), cell (B, 3, 3) Å with lattice vectors as rows, pbc (B, 3), natoms (B,)."""
    counts = torch.bincount(state.system_idx)
    ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    pbc = torch.full((counts.shape[0], 3), bool(state.pbc), device=counts.device)
    return Batch(z=state.atomic_numbers.long(), pos=state.positions.to(dtype), batch=state.system_idx, ptr=ptr,
                 cell=state.row_vector_cell.to(dtype), pbc=pbc, natoms=counts)


class TorchSimModel(ModelInterface):
    """``model`` (``energy_forces(batch) -> (energies (B,) eV, forces (N, 3) eV/Å)``) as a torch-sim
    ``ModelInterface``: every system of a state in one model call. dtype: the float type of the simulation's states
    (positions, momenta; the model computes in its own); device: the states' (default: the model's). A state with an
    element the student was not trained on is refused (``models.elements``) unless ``allow_unseen_elements``."""

    def __init__(self, model, dtype: torch.dtype = torch.float64, device: str | torch.device | None = None,
                 allow_unseen_elements: bool = False) -> None:
        super().__init__()
        self.model = model
        self.allow_unseen_elements = allow_unseen_elements
        self._device = torch.device(device) if device is not None else module_device(model)
        self._dtype = dtype
        self._compute_forces = True
        self._compute_stress = False
        self._memory_scales_with = "n_atoms_x_density"
        self._model_dtype = model_dtype(model)

    def forward(self, state, **_) -> dict[str, Tensor]:
        batch = state_batch(state, self._model_dtype)
        check_elements(self.model, batch.z, lambda unseen: f"torch-sim system(s) "
                       f"{torch.unique(batch.batch[unseen]).tolist()}", self.allow_unseen_elements)
        energy, forces = self.model.energy_forces(batch)
        return {"energy": energy.to(self._dtype), "forces": forces.to(self._dtype)}
