"""Reference labels from GFN2-xTB (or GFN1-xTB) with tblite: a fast semi-empirical option for labelling."""

from __future__ import annotations

import numpy as np


def xtb_energy_forces(atoms, method: str = "GFN2-xTB", charge: int = 0, spin: int = 0,
                      accuracy: float = 1.0) -> tuple[float, np.ndarray]:
    """Total energy (eV) and forces (N, 3) eV/Å of a molecule (or periodic cell) with tblite.

    method: "GFN2-xTB" or "GFN1-xTB"; spin: number of unpaired electrons. Raises RuntimeError when tblite fails
    (e.g. an SCC that does not converge): an unconverged label must never be written.
    """
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise ImportError("GFN-xTB labelling needs tblite: pip install 'hessdistill[label]'") from exc
    atoms = atoms.copy()
    atoms.calc = TBLite(method=method, charge=charge, multiplicity=spin + 1, accuracy=accuracy, verbosity=0)
    try:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    except Exception as exc:  # tblite raises its own error types
        raise RuntimeError(f"tblite {method} failed for {atoms.get_chemical_formula()}: {exc}") from exc
    return float(energy), np.asarray(forces, dtype=np.float64)
