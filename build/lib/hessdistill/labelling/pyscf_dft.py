"""Reference labels from Kohn-Sham DFT with pyscf (restricted KS, analytic gradient)."""

from __future__ import annotations

import numpy as np
from ase.units import Bohr, Hartree


def dft_energy_forces(atoms, xc: str = "wb97x", basis: str = "6-31g*", charge: int = 0, spin: int = 0,
                      conv_tol: float = 1e-9) -> tuple[float, np.ndarray]:
    """Total energy (eV) and forces (N, 3) eV/Å of a closed-shell molecule at xc/basis.

    Raises RuntimeError if the SCF does not converge (an unconverged label must never be written).
    """
    try:
        from pyscf import dft, gto
    except ImportError as exc:
        raise ImportError("DFT labelling needs pyscf: pip install 'hessdistill[label]'") from exc

    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                basis=basis, unit="Angstrom", charge=charge, spin=spin, verbose=0)
    mf = dft.RKS(mol)
    mf.xc = xc
    mf.conv_tol = conv_tol
    energy = mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge for {atoms.get_chemical_formula()}")
    gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
    return float(energy) * Hartree, -np.asarray(gradient) * Hartree / Bohr
