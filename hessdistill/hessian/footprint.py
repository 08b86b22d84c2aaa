"""Peak memory of a step estimated before it runs, from atom counts, neighbours and Hessian rows, so that work too
large for the machine is refused with the setting to change instead of being killed by the kernel.

A model's step (a prediction; a training step with its Hessian rows) saves tensors for backward in proportion to the
atoms N, edges E (directed neighbour pairs within the cutoff) and triplets T (pairs of edges meeting at an atom:
GemNet's angles) of what it computes: saved ≈ a·N + b·E + c·T bytes. a, b, c are measured on the model itself,
running the step (``SavedTensorBytes``, the model's own weights left out) on three probe clusters of 8 atoms of one
element, and the step's peak is a factor × saved (backward holds the gradients of what it walks; the factors are
measured, below). A structure's N, E and T are counted without listing its pairs (``cKDTree``); in a periodic cell
each atom has at least the neighbours its density N/V gives (images included; vacuum in a slab's cell dilutes it).

The teacher step stores full Hessians: ``HESSIAN_COPIES`` dense (3N)² float64 arrays are alive at its peak (the
teacher's output, H − Hᵀ, its absolute value, the stored cast), whatever the VJP lanes' budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls
from scipy.spatial import cKDTree
from torch_geometric.data import Batch

from hessdistill.data.structures import Structure
from hessdistill.errors import HessdistillError
from hessdistill.hessian.memory import SavedTensorBytes, free_memory

log = logging.getLogger(__name__)

# peak bytes of a step = factor × bytes its autograd graph saved; measured on CPU (peak RSS growth on 600–1000-atom
# clusters, every student of the zoo in both force modes, training rows by fd and vmap): prediction 1.1–2.0× (MACE
# the most), a training step 1.3–3.1× (conservative PaiNN with vmap rows the most)
PREDICTION_PEAK, TRAINING_PEAK = 2.5, 4.0
HESSIAN_COPIES = 4  # dense (3N)² float64 arrays alive at once in the teacher step (see the module docstring)
PROBE_ATOMS = 8


class MemoryEstimateError(HessdistillError, MemoryError):
    """Work whose estimated peak memory exceeds what the device has available; the message names the work, the
    estimate and the setting to change."""


@dataclass(frozen=True)
class Neighbourhood:
    """What a step's memory grows with: atoms N, edges E = Σ_i d_i (directed pairs within the cutoff, d_i: atom i's
    neighbours) and triplets T = Σ_i d_i (d_i − 1) (pairs of edges meeting at an atom: GemNet's angles)."""

    atoms: int
    edges: int
    triplets: int

    def __add__(self, other: Neighbourhood) -> Neighbourhood:
        return Neighbourhood(self.atoms + other.atoms, self.edges + other.edges, self.triplets + other.triplets)


def neighbourhood(structure: Structure, cutoff: float, max_neighbors: int | None = None) -> Neighbourhood:
    """Atoms, edges and triplets of ``structure`` at ``cutoff`` Å, counted without listing pairs; in a periodic cell
    each atom has at least ρ·(4/3)πr³ neighbours (ρ = N/V: images included); at most ``max_neighbors`` (a model's
    neighbour cap)."""
    tree = cKDTree(structure.positions)
    degree = tree.query_ball_point(structure.positions, cutoff, return_length=True).astype(np.float64) - 1
    if structure.pbc.any():
        density = structure.n_atoms / abs(float(np.linalg.det(structure.cell)))
        degree = np.maximum(degree, density * 4.0 / 3.0 * np.pi * cutoff**3)
    if max_neighbors:
        degree = np.minimum(degree, max_neighbors)
    return Neighbourhood(structure.n_atoms, int(degree.sum()), int((degree * np.maximum(degree - 1, 0)).sum()))


def probe_structures(cutoff: float, z: int) -> list[Structure]:
    """Three clusters of ``PROBE_ATOMS`` atoms of element ``z`` whose (N, E, T) are independent: four dimers out of
    each other's reach (E = N, T = 0), a chain (spacing 0.75·cutoff: E = 2(N−1)) and a compact 2×2×2 cube (every
    pair within the cutoff: E = N(N−1))."""
    bond = min(1.2, 0.5 * cutoff)  # Å; the cube's diagonal, √3·bond, stays within the cutoff
    dimers = np.zeros((PROBE_ATOMS, 3))
    dimers[:, 0] = np.arange(PROBE_ATOMS) // 2 * 2.0 * cutoff
    dimers[1::2, 1] = bond
    chain = np.zeros((PROBE_ATOMS, 3))
    chain[:, 0] = np.arange(PROBE_ATOMS) * 0.75 * cutoff
    cube = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) * bond
    return [Structure(z=np.full(PROBE_ATOMS, z), positions=p, source=f"{name} probe")
            for name, p in (("dimers", dimers), ("chain", chain), ("cube", cube))]


@dataclass(frozen=True)
class GraphCost:
    """Bytes a step's autograd graph saves per atom, per edge and per triplet."""

    per_atom: float
    per_edge: float
    per_triplet: float

    def peak(self, size: Neighbourhood, factor: float) -> float:
        """Estimated peak bytes of the step on a structure (or batch) of ``size``: ``factor`` × the saved bytes."""
        return factor * (self.per_atom * size.atoms + self.per_edge * size.edges + self.per_triplet * size.triplets)


def measure_graph_cost(step: Callable[[Batch], object], model: torch.nn.Module, cutoff: float, z: int,
                       dtype: torch.dtype, device: torch.device,
                       prepare: Callable[[Batch], Batch] = lambda batch: batch) -> GraphCost:
    """Per-atom, per-edge and per-triplet bytes that ``step(batch)`` saves for backward (``model``'s own weights
    left out), fitted (non-negative least squares) to the three probe clusters of element ``z``
    (``probe_structures``) in ``dtype`` on ``device``. prepare: what the caller adds to a probe batch first (e.g.
    sampled Hessian rows)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    sizes, saved = [], []
    for probe in probe_structures(cutoff, z):
        batch = prepare(Batch.from_data_list([probe.to_data(dtype)]).to(device))
        # compiled modules run eagerly here: no compiling for the probes' shapes
        with torch.compiler.set_stance("force_eager"), torch.enable_grad(), SavedTensorBytes() as graph:
            step(batch)
        size = neighbourhood(probe, cutoff)
        sizes.append([size.atoms, size.edges, size.triplets])
        saved.append(graph.bytes_besides(weights))
    coefficients, _ = nnls(np.asarray(sizes, dtype=np.float64), np.asarray(saved, dtype=np.float64))
    return GraphCost(*coefficients.tolist())


def teacher_hessian_bytes(n_atoms: int, rows: int | None = None) -> float:
    """Peak bytes of the dense Hessian arrays of one structure in the teacher step: ``HESSIAN_COPIES`` × (3N)²
    float64 for a full Hessian, or × rows·3N for ``rows`` sampled rows."""
    width = 3 * n_atoms
    return HESSIAN_COPIES * 8.0 * width * (rows if rows else width)


def check_teacher_hessians(n_atoms: np.ndarray, indices: np.ndarray | None, rows: int | None, where: str,
                           warn_gib: float) -> None:
    """Refuse or warn (``check_fits``, host memory) about the teacher step on the largest of the structures
    ``indices`` (None: all) of a store whose atom counts are ``n_atoms``: full Hessians, or ``rows`` sampled rows."""
    indices = np.arange(len(n_atoms)) if indices is None else np.asarray(indices)
    if len(indices) == 0:
        return
    i = int(indices[np.argmax(n_atoms[indices])])
    n = int(n_atoms[i])
    shape = f"{rows}×{3 * n} Hessian rows" if rows else f"a {3 * n}×{3 * n} Hessian"
    check_fits(teacher_hessian_bytes(n, rows), "cpu", f"the teacher step on {where}[{i}] ({n} atoms, {shape})",
               "store sampled rows instead of full Hessians (storage.layout=rows storage.rows=<k>), or leave the "
               "largest structures out of the subset", warn_gib)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_fits(needed: float, device: torch.device | str, what: str, change: str, warn_gib: float) -> None:
    """Refuse (MemoryEstimateError) ``what`` when its estimated peak ``needed`` (bytes) exceeds the memory available
    on ``device`` (``hessian.memory.free_memory``), warn above ``warn_gib`` GiB; ``change``: the setting that needs
    less, as the user would type it."""
    available = free_memory(torch.device(device))
    if needed > available:
        raise MemoryEstimateError(f"{what} needs about {gib(needed)} of {torch.device(device).type} memory at its "
                                  f"peak, more than the {gib(available)} available: {change}, or memory_check=false "
                                  f"to run it anyway")
    if needed > warn_gib * 2**30:
        log.warning("%s needs about %s of %s memory at its peak (%s available; warning above memory_warn_gib=%g): %s "
                    "to need less", what, gib(needed), torch.device(device).type, gib(available), warn_gib, change)
