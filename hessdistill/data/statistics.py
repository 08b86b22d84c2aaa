"""Per-element reference energies and the force RMS of a set of structures, accumulated block by block, so one
streamed pass over a store (or over the structures being written into it) gives them in bounded memory.

These are what a student's energy head is shifted and scaled by: references e_Z (eV) fitting E_i ≈ Σ_Z n_iZ e_Z by
least squares over structures i (n_iZ: atoms of element Z), and the RMS of the force components (eV/Å).
"""

from __future__ import annotations

import numpy as np

N_ELEMENTS = 119  # atomic numbers 0..118: column Z of the element-count matrix


def element_counts(z: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """(B, 119) atoms of each element in B structures whose atoms z (Σ n_atoms,) are concatenated in order."""
    owner = np.repeat(np.arange(len(n_atoms)), n_atoms)
    return np.bincount(owner * N_ELEMENTS + z, minlength=len(n_atoms) * N_ELEMENTS).reshape(-1, N_ELEMENTS)


class EnergyStatistics:
    """Accumulates the least-squares fit of per-element reference energies and the sum of squared forces.

    The fit is held as the R factor of the QR decomposition of [counts | energies] (≤ 120 × 120), updated per
    block (R ← R of [R; block]): the normal equations' information without squaring their condition number, so
    the result equals one ``lstsq`` over every row to round-off.
    """

    def __init__(self) -> None:
        self.r = np.zeros((0, N_ELEMENTS + 1))
        self.present = np.zeros(N_ELEMENTS, dtype=bool)
        self.sum_squared_forces, self.n_atoms, self.n_structures = 0.0, 0, 0

    def add(self, z: np.ndarray, n_atoms: np.ndarray, energy: np.ndarray, forces: np.ndarray) -> None:
        """Add B structures: z (A,) atomic numbers, n_atoms (B,) with Σ = A, energy (B,) eV, forces (A, 3) eV/Å."""
        if len(n_atoms) == 0:
            return
        counts = element_counts(np.asarray(z, dtype=np.int64), np.asarray(n_atoms, dtype=np.int64))
        self.present |= counts.any(axis=0)
        block = np.column_stack([counts, np.asarray(energy, dtype=np.float64)])
        self.r = np.linalg.qr(np.vstack([self.r, block]), mode="r")
        self.sum_squared_forces += float(np.square(np.asarray(forces, dtype=np.float64)).sum())
        self.n_atoms += int(np.sum(n_atoms))
        self.n_structures += len(n_atoms)

    def result(self) -> tuple[np.ndarray, float]:
        """Reference energies (119,) eV (0 for elements absent from every structure) and the force RMS, eV/Å."""
        if not self.n_structures:
            raise ValueError("energy statistics of no structures")
        coef, *_ = np.linalg.lstsq(self.r[:, :N_ELEMENTS][:, self.present], self.r[:, N_ELEMENTS], rcond=None)
        refs = np.zeros(N_ELEMENTS)
        refs[self.present] = coef
        return refs, float(np.sqrt(self.sum_squared_forces / (3 * self.n_atoms)))
