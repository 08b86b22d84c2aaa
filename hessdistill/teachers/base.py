"""The teacher interface: a frozen model giving energies, forces and Hessians (full, or sampled rows), as one
``TeacherOutput``.

``Teacher`` is the contract every consumer uses (precompute, online labels, evaluation). ``AutogradTeacher``
implements it for any model with a differentiable energy: a subclass defines only ``energy`` (eV per structure) and
the elements it supports, and forces and Hessians follow from ``hessdistill.hessian``. A teacher without a
differentiable energy (finite differences of an ASE calculator) implements the contract directly.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from hessdistill.errors import HessdistillError
from hessdistill.hessian.full import batched_hessians
from hessdistill.hessian.memory import LANE_BYTES_FACTOR, LaneChunker, MemoryBudget, SavedTensorBytes
from hessdistill.hessian.rows import RowStrategy, force_jacobian_rows


class UnsupportedElementError(HessdistillError, ValueError):
    """The teacher has no parameters for an element present in a structure."""


@dataclass
class TeacherOutput:
    """One teacher call's results, detached.

    energy: (B,) eV; forces: (Ntot, 3) eV/Å; hessians: full Hessians [(3N_i, 3N_i)] eV/Å² (``hessians`` calls);
    rows: sampled Hessian rows H_j as lanes (k, Ntot, 3) eV/Å² (``hessian_rows`` calls); asymmetry: (B,) max |H − Hᵀ|
    of each raw Hessian, eV/Å², where the returned ones were symmetrised (finite differences), else None;
    chunk_sizes: VJP lanes per chunk when a memory budget sized them, else None.
    """

    energy: Tensor
    forces: Tensor
    hessians: list[Tensor] | None = None
    rows: Tensor | None = None
    asymmetry: Tensor | None = None
    chunk_sizes: list[int] | None = None


class Teacher(torch.nn.Module, abc.ABC):
    """Frozen teacher. Batches are PyG batches with z (Ntot,), pos (Ntot, 3) Å, batch, ptr, cell, pbc.

    name: short identifier recorded in the store; level_of_theory: what the teacher was trained on; method: how its
    Hessians are computed (recorded in the store).
    """

    name: str = "teacher"
    level_of_theory: str = "unknown"
    method: str = "autograd: batched VJP lanes (hessdistill.hessian)"
    # the constructor argument whose value is loaded as code (a pickled model file, a class): such a teacher is built
    # only from the user's own config, never from a record in a file (hessdistill.evaluation.run_folder)
    code_argument: str | None = None

    def __init__(self) -> None:
        super().__init__()

    @property
    @abc.abstractmethod
    def elements(self) -> frozenset[int]:
        """Atomic numbers the teacher has parameters for."""

    @abc.abstractmethod
    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV and forces (Ntot, 3) eV/Å, detached."""

    @abc.abstractmethod
    def hessians(self, batch, chunk_size: int | MemoryBudget | None = None,
                 strategy: RowStrategy = "auto") -> TeacherOutput:
        """Energies, forces and full Hessians of every structure of ``batch``.

        chunk_size: VJP lanes per chunk (None: all max_i 3N_i at once), or a ``MemoryBudget`` to size them from."""

    @abc.abstractmethod
    def hessian_rows(self, batch, rows: Tensor, strategy: RowStrategy = "auto") -> TeacherOutput:
        """Energies, forces and the Hessian rows ``rows`` (B, k) of each structure, as lanes (k, Ntot, 3)."""

    def freeze(self) -> Teacher:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_elements(self, batch) -> None:
        """Raise UnsupportedElementError naming the structures (store index when known) and elements."""
        known = torch.tensor(sorted(self.elements), device=batch.z.device)
        bad = ~torch.isin(batch.z, known)
        if bad.any():
            graphs = torch.unique(batch.batch[bad]).tolist()
            ids = batch.idx[graphs].tolist() if hasattr(batch, "idx") else graphs
            missing = sorted(set(batch.z[bad].tolist()))
            raise UnsupportedElementError(
                f"teacher {self.name} has no parameters for atomic number(s) {missing} "
                f"(structure(s) {ids}); it supports {sorted(self.elements)}"
            )

    def node_features(self, batch) -> Tensor:
        """Per-atom features of the teacher's final layer, (Ntot, F), for the n2n baseline (optional capability)."""
        raise NotImplementedError(f"teacher {self.name} does not export node features")

    def element_embeddings(self) -> tuple[Tensor, Tensor]:
        """Atomic numbers (E,) and learned element embeddings (E, F), for the a2a baseline (optional capability)."""
        raise NotImplementedError(f"teacher {self.name} has no element embedding table to export")


class AutogradTeacher(Teacher):
    """A teacher with a differentiable energy: forces −∇U and Hessians by batched VJP lanes."""

    @abc.abstractmethod
    def energy(self, batch) -> Tensor:
        """Potential energy per structure, (B,) eV, differentiable w.r.t. ``batch.pos``."""

    def _prepare(self, batch):
        """A shallow copy of ``batch`` on the teacher's device whose pos (teacher dtype) is a fresh leaf; the
        caller's batch is left untouched (a student may be using it)."""
        self.check_elements(batch)
        batch = copy.copy(batch).to(self.device)
        batch.pos = batch.pos.to(self.dtype).detach().requires_grad_(True)
        return batch

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        batch = self._prepare(batch)
        with torch.enable_grad():
            energy = self.energy(batch)
            (grad,) = torch.autograd.grad(energy.sum(), batch.pos)
        return energy.detach(), -grad

    def hessians(self, batch, chunk_size: int | MemoryBudget | None = None,
                 strategy: RowStrategy = "auto") -> TeacherOutput:
        """With a ``MemoryBudget``, lanes per chunk follow from the bytes this batch's force graph saved
        (``hessian.memory``); ``chunk_sizes`` of the output lists them."""
        batch = self._prepare(batch)
        budget = chunk_size if isinstance(chunk_size, MemoryBudget) else None
        with torch.enable_grad():
            with SavedTensorBytes() if budget is not None else contextlib.nullcontext() as graph:
                energy = self.energy(batch)
                (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=True)
            if budget is not None:
                chunk_size = LaneChunker(budget.bytes(self.device), LANE_BYTES_FACTOR * graph.nbytes, self.device)
            hessians = batched_hessians(-grad, batch.pos, batch.ptr, chunk_size, strategy)
        return TeacherOutput(energy.detach(), -grad.detach(), hessians=hessians,
                             chunk_sizes=chunk_size.sizes if budget is not None else None)

    def hessian_rows(self, batch, rows: Tensor, strategy: RowStrategy = "auto") -> TeacherOutput:
        """k VJPs for the whole batch instead of 3N_max (row-subset storage, online teacher)."""
        batch = self._prepare(batch)
        with torch.enable_grad():
            energy = self.energy(batch)
            (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=True)
            lanes = force_jacobian_rows(-grad, batch.pos, rows.to(batch.pos.device), batch.ptr,
                                        create_graph=False, strategy=strategy)
        return TeacherOutput(energy.detach(), -grad.detach(), rows=-lanes.detach())
