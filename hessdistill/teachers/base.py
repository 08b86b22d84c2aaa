"""The teacher interface: a frozen model giving energies, forces and batched Hessians.

A subclass implements only ``energy`` (eV per structure, differentiable w.r.t. positions) and declares
the elements it supports; forces and Hessians follow generically from ``hessdistill.hessian``.
"""

from __future__ import annotations

import abc
import contextlib
import copy

import torch
from torch import Tensor

from hessdistill import hessian as hess
from hessdistill.lane_memory import LANE_BYTES_FACTOR, LaneChunker, MemoryBudget, SavedTensorBytes


class UnsupportedElementError(ValueError):
    """The teacher has no parameters for an element present in a structure."""


class Teacher(torch.nn.Module, abc.ABC):
    """Frozen teacher. Batches are PyG batches with z (Ntot,), pos (Ntot, 3) Å, batch, ptr, cell, pbc.

    name: short identifier recorded in the store; level_of_theory: what the teacher was trained on.
    """

    name: str = "teacher"
    level_of_theory: str = "unknown"
    method: str = "autograd: batched VJP lanes (hessdistill.hessian)"
    # (B,) max |H_raw − H_rawᵀ| of the last ``hessians`` call, eV/Å², for teachers that return symmetrised
    # Hessians (finite differences); None where the returned Hessians are as computed.
    last_asymmetry: Tensor | None = None
    # lanes per VJP chunk of the last ``hessians`` call under a memory budget (None without one)
    last_chunk_sizes: list[int] | None = None

    def __init__(self) -> None:
        super().__init__()

    @property
    @abc.abstractmethod
    def elements(self) -> frozenset[int]:
        """Atomic numbers the teacher has parameters for."""

    @abc.abstractmethod
    def energy(self, batch) -> Tensor:
        """Potential energy per structure, (B,) eV, differentiable w.r.t. ``batch.pos``."""

    def freeze(self) -> "Teacher":
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

    def _prepare(self, batch):
        """A shallow copy of ``batch`` on the teacher's device whose pos (teacher dtype) is a fresh leaf; the
        caller's batch is left untouched (a student may be using it)."""
        self.check_elements(batch)
        batch = copy.copy(batch).to(self.device)
        batch.pos = batch.pos.to(self.dtype).detach().requires_grad_(True)
        return batch

    def energy_forces(self, batch, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV and forces −∇U (Ntot, 3) eV/Å; forces keep a graph w.r.t. pos if create_graph."""
        batch = self._prepare(batch)
        with torch.enable_grad():
            energy = self.energy(batch)
            (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=create_graph)
        return energy, -grad

    def hessians(self, batch, chunk_size: int | MemoryBudget | None = None, strategy: hess.RowStrategy = "auto"):
        """Energies (B,) eV, forces (Ntot, 3) eV/Å and full Hessians [(3N_i, 3N_i)] eV/Å², all detached.

        chunk_size: VJP lanes per chunk (None: all max_i 3N_i at once), or a ``MemoryBudget``: lanes per chunk
        from the bytes this batch's force graph saved (``lane_memory``); ``last_chunk_sizes`` lists the chunks.
        """
        batch = self._prepare(batch)
        budget = chunk_size if isinstance(chunk_size, MemoryBudget) else None
        self.last_chunk_sizes = None
        with torch.enable_grad():
            with SavedTensorBytes() if budget is not None else contextlib.nullcontext() as graph:
                energy = self.energy(batch)
                (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=True)
            forces = -grad
            if budget is not None:
                chunk_size = LaneChunker(budget.bytes(self.device), LANE_BYTES_FACTOR * graph.nbytes, self.device)
                self.last_chunk_sizes = chunk_size.sizes  # filled as chunks run: after an OOM, its last is the one
            hessians = hess.batched_hessians(forces, batch.pos, batch.ptr, chunk_size, strategy)
        return energy.detach(), forces.detach(), hessians

    def hessian_rows(self, batch, rows: Tensor, strategy: hess.RowStrategy = "auto"):
        """Energies (B,) eV, forces (Ntot, 3) eV/Å and only the rows ``rows`` (B, k) of each Hessian, as lanes
        (k, Ntot, 3) eV/Å² — k VJPs for the whole batch instead of 3N_max (row-subset storage, online teacher)."""
        batch = self._prepare(batch)
        with torch.enable_grad():
            energy = self.energy(batch)
            (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=True)
            lanes = hess.force_jacobian_rows(-grad, batch.pos, rows.to(batch.pos.device), batch.ptr,
                                             create_graph=False, strategy=strategy)
        return energy.detach(), -grad.detach(), -lanes.detach()

    def node_features(self, batch) -> Tensor:
        """Per-atom features of the teacher's final layer, (Ntot, F), for the n2n baseline."""
        raise NotImplementedError(f"teacher {self.name} does not export node features")

    def element_embeddings(self) -> tuple[Tensor, Tensor]:
        """Atomic numbers (E,) and learned element embeddings (E, F), for the a2a baseline."""
        raise NotImplementedError(f"teacher {self.name} has no element embedding table to export")

