"""Any force model as a teacher: Hessians by central finite differences of its forces
(``hessdistill.hessian.finite_difference``, where the default step and its measured error table live).

The raw H is not exactly symmetric (truncation, round-off, kinks of the model); the teacher returns (H + Hᵀ)/2 and
reports max |H_raw − H_rawᵀ| per structure as the output's ``asymmetry``.

Two back ends:
  * ``FiniteDifferenceTeacher(calculator=...)``: any ASE calculator (CHGNet, SevenNet, EMT, ``TorchCalculator``);
    one calculator call per displacement, periodic cells passed through to ``ase.Atoms``.
  * ``FiniteDifferenceTeacher.from_teacher(teacher)``: a hessdistill model with ``energy_forces(batch)``;
    all displaced copies of the whole batch go through batched ``energy_forces`` calls of ≤ ``max_batch``
    structures, instead of 6N separate calls.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from hessdistill.hessian.finite_difference import (
    default_delta,
    displaced_positions,
    hessian_from_displaced_forces,
    jacobian_columns,
)
from hessdistill.teachers.base import Teacher, TeacherOutput

ALL_ELEMENTS = frozenset(range(1, 119))


class FiniteDifferenceTeacher(Teacher):
    """Central-difference Hessians of an ASE calculator's (or a hessdistill model's) forces.

    calculator: any ASE calculator giving energy (eV) and forces (eV/Å). name: store label.
    elements: atomic numbers the model supports (None: accept any). delta: displacement step, Å (None: 1e-3,
    safe for a calculator of unknown precision). dtype: precision of the returned tensors (and of the batches
    precompute builds). max_batch: structures per model call on the ``from_teacher`` path.
    """

    code_argument = "calculator"  # an ASE calculator object, which a config builds from a class name

    def __init__(self, calculator=None, name: str = "fd", elements: list[int] | None = None,
                 level_of_theory: str = "unknown", delta: float | None = None, dtype: str = "float64",
                 max_batch: int = 256) -> None:
        super().__init__()
        delta = default_delta(torch.float32) if delta is None else float(delta)
        if delta <= 0:
            raise ValueError(f"finite-difference step must be positive, got delta={delta}")
        self.calculator = calculator
        self.model: Teacher | None = None
        self.name, self.level_of_theory = name, level_of_theory
        self._elements = ALL_ELEMENTS if elements is None else frozenset(int(z) for z in elements)
        self.delta, self.max_batch = delta, int(max_batch)
        self.method = f"central finite differences of forces, delta={delta:g} Angstrom, symmetrised"
        self._dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    @classmethod
    def from_teacher(cls, teacher, delta: float | None = None, max_batch: int = 256, name: str | None = None,
                     level_of_theory: str | None = None) -> FiniteDifferenceTeacher:
        """Wrap a model with ``energy_forces(batch)``, ``elements`` and ``dtype`` (a hessdistill teacher).

        Displaced copies are evaluated in batches of ``max_batch`` structures; delta None: by ``teacher.dtype``.
        """
        delta = default_delta(teacher.dtype) if delta is None else delta
        fd = cls(name=name or f"{teacher.name}_fd", elements=sorted(teacher.elements), delta=delta,
                 level_of_theory=level_of_theory or teacher.level_of_theory, dtype=teacher.dtype, max_batch=max_batch)
        fd.model = teacher
        return fd

    @property
    def elements(self) -> frozenset[int]:
        return self._elements

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.model.device if self.model is not None else torch.device("cpu")

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV and forces (Ntot, 3) eV/Å straight from the wrapped model or calculator, detached."""
        self.check_elements(batch)
        if self.model is not None:
            energy, forces = self.model.energy_forces(batch)
            return energy.detach().to(self.dtype), forces.detach().to(self.dtype)
        results = [self._calculate(batch, g, batch.pos[batch.ptr[g] : batch.ptr[g + 1]])
                   for g in range(batch.num_graphs)]
        energies = torch.tensor([e for e, _ in results], dtype=self.dtype)
        return energies, torch.cat([f for _, f in results]).to(self.dtype)

    def hessians(self, batch, chunk_size: int | None = None, strategy: str = "auto") -> TeacherOutput:
        """Symmetrised Hessians [(3N_i, 3N_i)] eV/Å² from 6N_i displaced force calls per structure, and the raw
        ones' asymmetry (B,) eV/Å². chunk_size and strategy (autograd lane settings) do not apply and are ignored."""
        energy, forces = self.energy_forces(batch)
        ptr = batch.ptr.tolist()
        displaced = [displaced_positions(batch.pos[a:b], self.delta) for a, b in zip(ptr, ptr[1:])]
        raw = [hessian_from_displaced_forces(f, self.delta) for f in self._displaced_forces(batch, displaced)]
        asymmetry = torch.tensor([float((h - h.T).abs().max()) for h in raw], dtype=torch.float64)
        return TeacherOutput(energy, forces, hessians=[(0.5 * (h + h.T)).to(self.dtype) for h in raw],
                             asymmetry=asymmetry)

    def hessian_rows(self, batch, rows: Tensor, strategy: str = "auto") -> TeacherOutput:
        """Hessian rows ``rows`` (B, k) as lanes (k, Ntot, 3) eV/Å².

        Row j is taken as minus column j of the force Jacobian, since the Hessian is symmetric: 2k force evaluations
        per structure instead of 6N (row-subset storage and online mode)."""
        energy, forces = self.energy_forces(batch)
        ptr = batch.ptr.tolist()
        displaced = [displaced_positions(batch.pos[a:b], self.delta, rows[g])
                     for g, (a, b) in enumerate(zip(ptr, ptr[1:]))]
        lanes = [-jacobian_columns(f, self.delta).view(rows.shape[1], -1, 3)
                 for f in self._displaced_forces(batch, displaced)]
        return TeacherOutput(energy, forces, rows=torch.cat(lanes, dim=1).to(self.dtype))

    def _displaced_forces(self, batch, displaced: list[Tensor]) -> list[Tensor]:
        """Forces [(C_i, N_i, 3)] eV/Å at each structure's displaced copies (C_i, N_i, 3) Å."""
        if self.model is not None:
            return self._batched_forces(batch, displaced)
        return [torch.stack([self._calculate(batch, g, p)[1] for p in copies]) for g, copies in enumerate(displaced)]

    def _calculate(self, batch, g: int, pos: Tensor) -> tuple[float, Tensor]:
        """Energy (eV) and forces (N, 3) eV/Å of structure g of ``batch`` at positions ``pos`` (N, 3) Å."""
        from ase import Atoms

        if self.calculator is None:
            raise ValueError(f"teacher {self.name} has no model: pass calculator=... or build it with from_teacher")
        atoms = Atoms(numbers=batch.z[batch.ptr[g] : batch.ptr[g + 1]].cpu().numpy(),
                      positions=pos.detach().cpu().double().numpy(),
                      cell=batch.cell[g].detach().cpu().double().numpy(), pbc=batch.pbc[g].cpu().numpy())
        atoms.calc = self.calculator
        forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        return float(atoms.get_potential_energy()), torch.as_tensor(forces)

    def _batched_forces(self, batch, displaced: list[Tensor]) -> list[Tensor]:
        """Forces [(C_i, N_i, 3)] eV/Å at the displaced copies of every structure, ≤ max_batch per model call."""
        examples = batch.to_data_list()
        owner = [g for g, copies in enumerate(displaced) for _ in range(copies.shape[0])]
        positions = [p for copies in displaced for p in copies]
        forces = []
        for start in range(0, len(owner), self.max_batch):
            chunk = range(start, min(start + self.max_batch, len(owner)))
            copies = Batch.from_data_list([examples[owner[k]] for k in chunk])
            copies.pos = torch.cat([positions[k] for k in chunk]).to(copies.pos.device)
            _, f = self.model.energy_forces(copies)
            forces.append(f.detach().to(self.dtype))
        flat = torch.cat(forces)
        sizes = [copies.shape[0] * copies.shape[1] for copies in displaced]
        return [f.view(c.shape) for f, c in zip(flat.split(sizes), displaced)]
