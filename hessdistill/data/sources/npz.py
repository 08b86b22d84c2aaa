"""sGDML-style ``.npz`` trajectories (MD17, MD22: ``z``, ``R``, ``E``, ``F``; revised MD17: ``nuclear_charges``,
``coords``, ``energies``, ``forces``) as Structure records. Both ship energies in kcal/mol and forces in
kcal/mol/Å, hence the default unit factor. The arrays are loaded whole (an ``.npz`` is a zip archive; MD22's
largest is a few hundred MB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase.units import kcal, mol

from hessdistill.data.sources.conformers import conformer_structures
from hessdistill.data.structures import InvalidStructureError, Structure, unit_factors

KEYS = {"md": ("z", "R", "E", "F"), "rmd17": ("nuclear_charges", "coords", "energies", "forces")}


def read_npz(path: str | Path, energy_unit: float = kcal / mol, length_unit: float = 1.0,
             require_labels: bool = True) -> Iterator[Structure]:
    """Every frame of an MD17/MD22/rMD17 ``.npz`` (an iterator, like every reader); energy_unit/length_unit
    convert to eV and Å (default kcal/mol → eV). Raises InvalidStructureError naming the file for missing or
    misshapen arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    energy_unit, length_unit = unit_factors(path, energy_unit, length_unit)
    with np.load(path) as data:
        names = next((k for k in KEYS.values() if k[0] in data and k[1] in data), None)
        if names is None:
            raise InvalidStructureError(f"{path}: neither MD17/MD22 keys (z, R, E, F) nor rMD17 keys (nuclear_charges, "
                                        f"coords, energies, forces); found {sorted(data.files)}")
        z_key, r_key, e_key, f_key = names
        if require_labels and (e_key not in data or f_key not in data):
            raise InvalidStructureError(f"{path}: missing {e_key!r} or {f_key!r}")
        z = np.asarray(data[z_key]).astype(np.int64).reshape(-1)
        positions = np.asarray(data[r_key], dtype=np.float64) * length_unit
        energies = forces = None
        if e_key in data and f_key in data:
            energies = np.asarray(data[e_key], dtype=np.float64).reshape(-1) * energy_unit
            forces = np.asarray(data[f_key], dtype=np.float64) * (energy_unit / length_unit)
    structures, _ = conformer_structures(str(path), z, positions, energies, forces, {"molecule": path.stem},
                                         (r_key, e_key, f_key), require_labels)
    return iter(structures)
