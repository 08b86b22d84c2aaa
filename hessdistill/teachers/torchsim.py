"""Any torch-sim model (a ``torch_sim.models.interface.ModelInterface``: MACE, fairchem UMA, ORB, MatterSim,
SevenNet, metatomic, analytic potentials, ...) as a teacher.

The model is built by Hydra from the user's own config (``teacher=torchsim teacher.model._target_=...``). Hessians come
by autograd where the energy the model returns is a differentiable function of the positions it was given, else by
central finite differences of its forces (all displaced copies in batched model calls,
``FiniteDifferenceTeacher.from_teacher``). ``hessian="auto"`` decides once, at construction, by evaluating a two-atom
probe with positions that require gradients (finite differences if the probe fails). torch-sim 0.3's interfaces:

==========================================  ==================  =====================================================
model interface                             Hessian             why
==========================================  ==================  =====================================================
MaceModel (mace.py)                         finite differences  returns ``energy.detach()`` (for exact MACE Hessians
                                                                by autograd use teacher=mace / mace_off / mace_mp)
SevenNetModel, FairChemModel (UMA),         finite differences  return detached outputs
OrbModel, MatterSimModel, MetatomicModel
LennardJonesModel, MorseModel,              autograd            energy computed from the positions it was given
SoftSphereModel
==========================================  ==================  =====================================================

On the autograd path the forces are −∇U as well, so forces and Hessians are derivatives of one energy (torch-sim
0.3.0's LennardJonesModel returns forces of twice −∇U, a double count: measured here against ASE's LennardJones).

torch-sim takes one ``pbc`` flag per state: a batch mixing periodic and non-periodic structures is refused.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from hessdistill.hessian.rows import RowStrategy
from hessdistill.teachers.base import AutogradTeacher, TeacherOutput
from hessdistill.teachers.finite_difference import ALL_ELEMENTS, FiniteDifferenceTeacher

log = logging.getLogger(__name__)

HESSIAN_METHODS = ("auto", "autograd", "finite_difference")
PROBE_CELL = 10.0  # Å: periodic cubic box of the two-atom probe
PROBE_DISTANCE = 2.0  # Å


def sim_state(batch, pos: Tensor):
    """A torch-sim ``SimState`` of a PyG batch (cell rows → torch-sim's column convention) with positions ``pos``
    (Ntot, 3) Å; one pbc flag for the whole batch."""
    import torch_sim as ts
    from ase.data import atomic_masses

    periodic = batch.pbc.all(dim=1)
    if not (bool(periodic.all()) or not bool(batch.pbc.any())):
        raise ValueError("torch-sim takes one pbc flag per state: this batch mixes periodic and non-periodic "
                         "structures (or partly periodic ones); label them in separate stores")
    masses = torch.as_tensor(atomic_masses, dtype=pos.dtype, device=pos.device)[batch.z]
    return ts.SimState(positions=pos, masses=masses, cell=batch.cell.to(pos.dtype).transpose(1, 2),
                       pbc=bool(periodic.all()), atomic_numbers=batch.z, system_idx=batch.batch)


class TorchSimTeacher(AutogradTeacher):
    """A torch-sim ``ModelInterface`` as a teacher.

    model: the model (its own device and dtype are used). elements: atomic numbers it supports (None: what the
    model says, e.g. MACE's ``z_table``, else any). hessian: auto | autograd | finite_difference (module docstring).
    delta: finite-difference step, Å (None: by the model's dtype). max_batch: displaced structures per model call.
    """

    code_argument = "model"  # any class a config names: built only from the user's own config

    def __init__(self, model, name: str = "torchsim", level_of_theory: str = "unknown",
                 elements: list[int] | None = None, hessian: str = "auto", delta: float | None = None,
                 max_batch: int = 64) -> None:
        super().__init__()
        if hessian not in HESSIAN_METHODS:
            raise ValueError(f"hessian must be one of {HESSIAN_METHODS}, got {hessian!r}")
        self.model = model
        self.name, self.level_of_theory = name, level_of_theory
        table = getattr(model, "z_table", None)
        self._elements = (frozenset(int(z) for z in elements) if elements is not None
                          else frozenset(int(z) for z in table.zs) if table is not None else ALL_ELEMENTS)
        self.delta, self.max_batch = delta, int(max_batch)
        self.freeze()
        self.autograd = self._energy_is_differentiable() if hessian == "auto" else hessian == "autograd"
        self.method = (f"autograd through {type(model).__name__}'s energy (hessdistill.hessian)" if self.autograd
                       else f"central finite differences of {type(model).__name__}'s forces, symmetrised")

    @property
    def elements(self) -> frozenset[int]:
        return self._elements

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    def _energy_is_differentiable(self) -> bool:
        """Whether the energy the model returns depends differentiably on the positions it was given: two atoms of
        the lowest supported element, 2 Å apart in a periodic 10 Å box."""
        from torch_geometric.data import Batch

        z = min(self._elements)
        probe = Batch(z=torch.tensor([z, z], device=self.device),
                      pos=torch.tensor([[0.0, 0.0, 0.0], [PROBE_DISTANCE, 0.0, 0.0]], dtype=self.dtype,
                                       device=self.device),
                      cell=PROBE_CELL * torch.eye(3, dtype=self.dtype, device=self.device).unsqueeze(0),
                      pbc=torch.ones(1, 3, dtype=torch.bool, device=self.device),
                      batch=torch.zeros(2, dtype=torch.long, device=self.device),
                      ptr=torch.tensor([0, 2], device=self.device))
        try:
            with torch.enable_grad():
                return bool(self.energy(self._prepare(probe)).requires_grad)
        except Exception as exc:  # noqa: BLE001 (any failure of the probe: finite differences are always valid)
            log.warning("teacher %s: the autograd probe failed (%s: %s); Hessians by finite differences", self.name,
                        type(exc).__name__, exc)
            return False

    def energy(self, batch) -> Tensor:
        """(B,) eV: the model's energy at ``batch.pos``."""
        return self.model(sim_state(batch, batch.pos))["energy"]

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV and forces (Ntot, 3) eV/Å: −∇U by autograd where the Hessians are by autograd too (the
        derivatives of one energy), else the model's own forces."""
        if self.autograd:
            return super().energy_forces(batch)
        self.check_elements(batch)
        batch = batch.to(self.device)
        out = self.model(sim_state(batch, batch.pos.to(self.dtype)))
        return out["energy"].detach(), out["forces"].detach()

    def _finite_differences(self) -> FiniteDifferenceTeacher:
        return FiniteDifferenceTeacher.from_teacher(self, self.delta, self.max_batch, name=self.name)

    def hessians(self, batch, chunk_size=None, strategy: RowStrategy = "auto") -> TeacherOutput:
        if self.autograd:
            return super().hessians(batch, chunk_size, strategy)
        return self._finite_differences().hessians(batch)

    def hessian_rows(self, batch, rows: Tensor, strategy: RowStrategy = "auto") -> TeacherOutput:
        if self.autograd:
            return super().hessian_rows(batch, rows, strategy)
        return self._finite_differences().hessian_rows(batch, rows)
