"""Thermal displacements along a Hessian's normal modes.

In the harmonic approximation U(x₀ + d) ≈ U(x₀) + ½ dᵀHd, the Boltzmann distribution of configurations at
temperature T is Gaussian: along each mode v_k (eigenvector of H, eigenvalue λ_k in eV/Å²) the amplitude
a_k = v_kᵀd is normal with variance k_B·T/λ_k, so that ⟨λ_k a_k²⟩ = k_B·T (equipartition). Configurational
statistics do not depend on the masses, so the Cartesian Hessian is used as it is.

Rigid translations and rotations (6, or 5 for a linear molecule, 3 for one atom) are projected out before the
modes are found: they change nothing, and off a minimum the gradient makes the rotations' eigenvalues non-zero.
Modes softer than ``min_eigenvalue`` (including negative ones, away from a minimum) are skipped: their harmonic
amplitude would be huge or undefined.
"""

from __future__ import annotations

import numpy as np
from ase.units import kB

RIGID_TOL = 1e-8  # singular values below this × the largest span no rigid motion (linear molecules, one atom)


def rigid_basis(positions: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3N, r) of rigid translations and rotations about the centroid of ``positions`` (N, 3) Å;
    r = 6, 5 (linear) or 3 (one atom)."""
    n = len(positions)
    centred = positions - positions.mean(axis=0)
    axes = np.eye(3)
    translations = [np.tile(axis, n) for axis in axes]
    rotations = [np.cross(axis, centred).reshape(-1) for axis in axes]
    u, sigma, _ = np.linalg.svd(np.stack(translations + rotations, axis=1), full_matrices=False)
    return u[:, sigma > RIGID_TOL * sigma.max()]


def internal_modes(hessian: np.ndarray, positions: np.ndarray, min_eigenvalue: float) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Eigenvalues (K,) eV/Å² and orthonormal modes (3N, K) of ``hessian`` (3N, 3N) in the space orthogonal to the
    rigid motions of ``positions`` (N, 3), keeping eigenvalues above ``min_eigenvalue``."""
    rigid = rigid_basis(positions)
    width = hessian.shape[0]
    projector = np.eye(width) - rigid @ rigid.T
    values, vectors = np.linalg.eigh(projector)
    internal = vectors[:, values > 0.5]  # (3N, 3N − r): the projector's eigenvalue-1 space
    symmetric = 0.5 * (hessian + hessian.T)
    eigenvalues, coefficients = np.linalg.eigh(internal.T @ symmetric @ internal)
    keep = eigenvalues > min_eigenvalue
    return eigenvalues[keep], internal @ coefficients[:, keep]


def thermal_displacements(eigenvalues: np.ndarray, modes: np.ndarray, temperature_K: float, count: int,
                          rng: np.random.Generator) -> np.ndarray:
    """``count`` displacements (count, N, 3) Å, Σ_k a_k v_k with a_k ~ N(0, k_B·T/λ_k) independent."""
    amplitudes = rng.standard_normal((count, len(eigenvalues))) * np.sqrt(kB * temperature_K / eigenvalues)
    return (amplitudes @ modes.T).reshape(count, -1, 3)
