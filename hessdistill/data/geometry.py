"""Geometry checks of a structure: how thin its periodic cell is and which two atoms are closest.

Units: Å. Both checks serve ``Structure.validate``: atoms closer than ``MIN_DISTANCE`` are a duplicated atom or
coordinates in the wrong unit (their teacher Hessians run to hundreds of eV/Å²), and a periodic cell thinner than
``MIN_DISTANCE`` is singular or nearly so (neighbour searches fail on it, or list unbounded numbers of images).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial import cKDTree

MIN_DISTANCE = 0.5  # Å; the shortest bond, H–H, is 0.74 Å
# P periodic axes → the (3^P − 1, 1, P) nonzero cell shifts −1, 0, 1 along each
SHIFTS = {p: np.asarray([s for s in itertools.product((-1, 0, 1), repeat=p) if any(s)])[:, None, :] for p in (1, 2, 3)}


def periodic_widths(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Distance of each periodic cell vector from the span of the other periodic ones, (P,) Å (P = periodic axes):
    the spacing of the lattice planes along that axis; 0 for a singular cell. cell (3, 3) Å rows; pbc (3,) bool.
    With G the Gram matrix of the periodic vectors, width_k = 1/√((G⁻¹)_kk)."""
    vectors = cell[pbc]
    try:
        diagonal = np.diag(np.linalg.inv(vectors @ vectors.T))
    except np.linalg.LinAlgError:
        return np.zeros(len(vectors))
    return np.where(diagonal > 0, 1.0 / np.sqrt(np.abs(diagonal)), 0.0)


def closest_pair(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                 cutoff: float = MIN_DISTANCE) -> tuple[int, int, float] | None:
    """The two atoms (i ≤ j) closest to each other among pairs closer than ``cutoff`` Å, and their distance (Å),
    periodic images included; None when no pair is that close.

    positions (N, 3) Å; cell (3, 3) Å; pbc (3,) bool. Periodic axes need widths ≥ ``cutoff`` (``periodic_widths``).
    """
    wrapped, images, owner = positions, np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    if pbc.any():
        wrapped, images, owner = _images_in_reach(positions, cell[pbc], cutoff / periodic_widths(cell, pbc))
    tree = cKDTree(wrapped)
    inside = tree.query_pairs(cutoff, output_type="ndarray")  # (M, 2), i < j
    i, j = inside[:, 0], inside[:, 1]
    distance = np.linalg.norm(wrapped[i] - wrapped[j], axis=1)
    if len(images):
        across = tree.sparse_distance_matrix(cKDTree(images), cutoff, output_type="ndarray")
        i, j = np.concatenate([i, across["i"]]), np.concatenate([j, owner[across["j"]]])
        distance = np.concatenate([distance, across["v"]])
    if len(distance) == 0:
        return None
    k = int(np.argmin(distance))
    first, second = sorted((int(i[k]), int(j[k])))
    return first, second, float(distance[k])


def _images_in_reach(positions: np.ndarray, vectors: np.ndarray, reach: np.ndarray):
    """Positions (N, 3) wrapped into the cell along the periodic ``vectors`` (P, 3), and the periodic images (K, 3)
    that can be within the cutoff of an atom in the cell, with the atom each is an image of (K,).

    reach (P,): the cutoff over each axis' width, ≤ 1. Only images one cell away can then be in reach, and only of
    atoms within the cutoff of the face they cross: a few per cell, not 3^P − 1 copies of it."""
    fractional = np.linalg.solve(vectors @ vectors.T, vectors @ positions.T).T  # (N, P)
    wrapped = positions - np.floor(fractional) @ vectors
    fractional -= np.floor(fractional)
    shifts = SHIFTS[len(vectors)]
    near = ((shifts == 0) | ((shifts == 1) & (fractional < reach)) | ((shifts == -1) & (fractional > 1 - reach)))
    which, owner = np.nonzero(near.all(axis=2))  # image k: atom owner[k] moved by shifts[which[k]] cells
    return wrapped, wrapped[owner] + shifts[which, 0] @ vectors, owner
