"""Any force model as a teacher: Hessians by central finite differences of forces.

Column j of the Hessian is H[:, j] = −(F(r + δ e_j) − F(r − δ e_j)) / (2δ), eV/Å², from 6N force
evaluations per structure. The raw H is not exactly symmetric (truncation, round-off, kinks of the model);
the teacher returns (H + Hᵀ)/2 and keeps max |H_raw − H_rawᵀ| per structure in ``last_asymmetry``.

Two back ends:
  * ``FiniteDifferenceTeacher(calculator=...)``: any ASE calculator (CHGNet, SevenNet, EMT, ``TorchCalculator``);
    one calculator call per displacement, periodic cells passed through to ``ase.Atoms``.
  * ``FiniteDifferenceTeacher.from_teacher(teacher)``: a hessdistill model with ``energy_forces(batch)``;
    all displaced copies of the whole batch go through batched ``energy_forces`` calls of ≤ ``max_batch``
    structures, instead of 6N separate calls.

Default step δ, by the precision the model computes forces in (``default_delta``): 1e-5 Å in float64,
1e-3 Å in float32 or unknown (any ASE calculator) — near ε^(1/3) times the length scale, where
central-difference truncation (∝ δ²) and round-off (∝ ε/δ) balance. Measured: relative Frobenius error
‖H_fd − H_autograd‖ / ‖H_autograd‖ against the autograd Hessian of the same model, worst of rattled H2O and
NH3 (tests/test_finite_difference_teacher.py re-checks the MACE rows and ANI at 1e-3 and 1e-5 Å):

    δ (Å)                   1e-2     3e-3     1e-3     3e-4     1e-4     1e-5     1e-6     1e-7
    tiny MACE, float64      1.7e-3   1.5e-4   1.7e-5   1.5e-6   1.7e-7   1.7e-9   4.8e-10  3.3e-9
    tiny MACE, float32      1.7e-3   1.8e-4   2.7e-4   7.9e-4   2.3e-3   2.5e-2   1.6e-1   1.7
    ANI-1x, float64         4.6e-2   2.6e-2   1.3e-2   2.5e-4   5.7e-5   1.7e-8   2.3e-9   2.0e-9
    ANI-1x, float32         4.6e-2   2.6e-2   1.2e-2   3.5e-4   6.8e-4   7.2e-3   6.8e-2   4.4e-1

The smooth MACE shows pure truncation (∝ δ²) down to a float64 minimum at 1e-6 … 1e-5 Å and a float32
minimum at 1e-3 … 3e-3 Å, with round-off growing as 1/δ below. ANI's CELU activations make its Hessian only
piecewise continuous: a step straddling a kink of the second derivative costs ~1 % at δ ≥ 1e-3 Å, so small
steps pay off there too. A calculator's precision is unknown, and most foundation models run in float32, so
it gets the float32 step (error ~1 % for ANI, 2e-5 for MACE in float64); pass delta=1e-5 for a float64 calculator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from hessdistill.teachers.base import Teacher

DEFAULT_DELTA = {torch.float64: 1e-5, torch.float32: 1e-3}  # Å, by model precision; see the module docstring
ALL_ELEMENTS = frozenset(range(1, 119))


def default_delta(dtype: torch.dtype) -> float:
    """Default central-difference step (Å) for a model computing forces in ``dtype``; the float32 step otherwise."""
    return DEFAULT_DELTA.get(dtype, DEFAULT_DELTA[torch.float32])


def displaced_positions(pos: Tensor, delta: float) -> Tensor:
    """(N, 3) Å → (6N, N, 3) Å: copies with +δ on coordinate j (rows 0..3N−1), then −δ (rows 3N..6N−1)."""
    flat = pos.detach().reshape(1, -1)
    steps = delta * torch.eye(flat.shape[1], dtype=pos.dtype, device=pos.device)
    return torch.cat([flat + steps, flat - steps]).view(-1, *pos.shape)


def hessian_from_displaced_forces(forces: Tensor, delta: float) -> Tensor:
    """Forces (6N, N, 3) eV/Å at ``displaced_positions`` → raw (unsymmetrised) Hessian (3N, 3N) eV/Å².

    Row j of plus/minus is the flattened force at r ± δ e_j, i.e. *column* j of −H; hence the transpose.
    """
    n3 = forces.shape[0] // 2
    plus, minus = forces[:n3].reshape(n3, n3), forces[n3:].reshape(n3, n3)
    return -(plus - minus).T / (2 * delta)


class FiniteDifferenceTeacher(Teacher):
    """Central-difference Hessians of an ASE calculator's (or a hessdistill model's) forces.

    calculator: any ASE calculator giving energy (eV) and forces (eV/Å). name: store label.
    elements: atomic numbers the model supports (None: accept any). delta: displacement step, Å (None: 1e-3,
    safe for a calculator of unknown precision). dtype: precision of the returned tensors (and of the batches
    precompute builds). max_batch: structures per model call on the ``from_teacher`` path.
    After ``hessians``, ``last_asymmetry`` (B,) holds max |H_raw − H_rawᵀ| per structure, eV/Å².
    """

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
        self.last_asymmetry = torch.zeros(0, dtype=torch.float64)

    @classmethod
    def from_teacher(cls, teacher, delta: float | None = None, max_batch: int = 256, name: str | None = None,
                     level_of_theory: str | None = None) -> "FiniteDifferenceTeacher":
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

    def energy(self, batch) -> Tensor:
        if self.model is None:
            raise NotImplementedError(f"teacher {self.name} wraps an ASE calculator: it has no differentiable "
                                      "energy; use energy_forces or hessians")
        return self.model.energy(batch)

    def energy_forces(self, batch, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV and forces (Ntot, 3) eV/Å straight from the wrapped model, detached."""
        if create_graph:
            raise NotImplementedError(f"teacher {self.name}: finite-difference forces carry no autograd graph")
        self.check_elements(batch)
        if self.model is not None:
            energy, forces = self.model.energy_forces(batch)
            return energy.detach().to(self.dtype), forces.detach().to(self.dtype)
        results = [self._calculate(batch, g, batch.pos[batch.ptr[g] : batch.ptr[g + 1]])
                   for g in range(batch.num_graphs)]
        energies = torch.tensor([e for e, _ in results], dtype=self.dtype)
        return energies, torch.cat([f for _, f in results]).to(self.dtype)

    def hessians(self, batch, chunk_size: int | None = None, strategy: str = "auto"):
        """Energies (B,) eV, forces (Ntot, 3) eV/Å and symmetrised Hessians [(3N_i, 3N_i)] eV/Å².

        chunk_size and strategy (autograd lane settings) are accepted for interface compatibility and unused.
        """
        energy, forces = self.energy_forces(batch)
        ptr = batch.ptr.tolist()
        # displacements in float64 whatever the model's precision, so the step really is δ
        displaced = [displaced_positions(batch.pos[a:b].double(), self.delta) for a, b in zip(ptr, ptr[1:])]
        raw = [hessian_from_displaced_forces(f, self.delta) for f in self._displaced_forces(batch, displaced)]
        self.last_asymmetry = torch.tensor([float((h - h.T).abs().max()) for h in raw], dtype=torch.float64)
        return energy, forces, [(0.5 * (h + h.T)).to(self.dtype) for h in raw]

    def hessian_rows(self, batch, rows: Tensor, strategy: str = "auto"):
        """Energies (B,) eV, forces (Ntot, 3) eV/Å and Hessian rows ``rows`` (B, k) as lanes (k, Ntot, 3) eV/Å².

        Row j is taken as column j, −(F(r + δe_j) − F(r − δe_j))/(2δ), since the Hessian is symmetric: 2k force
        evaluations per structure instead of 6N (row-subset storage and online mode)."""
        energy, forces = self.energy_forces(batch)
        ptr = batch.ptr.tolist()
        displaced = []
        for g, (a, b) in enumerate(zip(ptr, ptr[1:])):
            flat = batch.pos[a:b].double().reshape(1, -1)
            steps = self.delta * torch.eye(flat.shape[1], dtype=flat.dtype)[rows[g].cpu()]
            displaced.append(torch.cat([flat + steps, flat - steps]).view(-1, b - a, 3))
        k = rows.shape[1]
        columns = [-(f[:k] - f[k:]) / (2 * self.delta) for f in self._displaced_forces(batch, displaced)]
        return energy, forces, torch.cat(columns, dim=1).to(self.dtype)

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
