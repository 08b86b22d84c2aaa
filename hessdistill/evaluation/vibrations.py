"""Harmonic vibrational frequencies from a Hessian (the models' Hessians: ``TorchCalculator.get_hessian``)."""

from __future__ import annotations

import numpy as np
from ase import units

# √(eV / (Å² amu)) in s⁻¹ (angular frequency), then wavenumbers ω / (2π c) in cm⁻¹
_TO_WAVENUMBER = np.sqrt(units._e / (1e-20 * units._amu)) / (2 * np.pi * units._c * 100)


def harmonic_frequencies(hessian: np.ndarray, masses: np.ndarray, linear: bool | None = None) -> np.ndarray:
    """Vibrational wavenumbers (cm⁻¹, ascending; imaginary modes as negative numbers) of a (3N, 3N) Hessian in
    eV/Å² with atomic masses (N,) amu. The 6 modes closest to zero (5 for a linear molecule; ``linear=None``
    guesses from the mode count) are translations and rotations and are dropped."""
    hessian = 0.5 * (np.asarray(hessian, dtype=np.float64) + np.asarray(hessian, dtype=np.float64).T)
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(np.asarray(masses, dtype=np.float64), 3))
    eigenvalues = np.linalg.eigvalsh(hessian * inv_sqrt_m[:, None] * inv_sqrt_m[None, :])
    wavenumbers = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * _TO_WAVENUMBER
    n_atoms = len(masses)
    rigid = 3 if n_atoms == 1 else (5 if (n_atoms == 2 if linear is None else linear) else 6)
    keep = np.argsort(np.abs(wavenumbers))[rigid:]
    return np.sort(wavenumbers[keep])
