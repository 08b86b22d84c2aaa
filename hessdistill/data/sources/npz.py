"""sGDML-style ``.npz`` trajectories (MD17, MD22: ``z``, ``R``, ``E``, ``F``; revised MD17: ``nuclear_charges``,
``coords``, ``energies``, ``forces``) as Structure records. Both ship energies in kcal/mol and forces in
kcal/mol/Å, hence the default unit factor. The arrays are loaded whole (an ``.npz`` is a zip archive; MD22's
largest is a few hundred MB)."""

from __future__ import annotations

import zipfile
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
    try:
        archive = np.load(path, allow_pickle=False)  # never: a pickle in a data file would be code
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        what = "a pickle, which is never loaded (unpickling runs code from the file)" if "pickle" in str(exc) else \
            f"unreadable ({exc})"
        raise InvalidStructureError(f"{path}: not an npz archive of numeric arrays: {what}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidStructureError(f"{path}: a single .npy array, not an npz archive of named arrays")
    with archive as data:
        names = next((k for k in KEYS.values() if k[0] in data and k[1] in data), None)
        if names is None:
            raise InvalidStructureError(f"{path}: neither MD17/MD22 keys (z, R, E, F) nor rMD17 keys (nuclear_charges, "
                                        f"coords, energies, forces); found {sorted(data.files)}")
        z_key, r_key, e_key, f_key = names
        if require_labels and (e_key not in data or f_key not in data):
            raise InvalidStructureError(f"{path}: missing {e_key!r} or {f_key!r}")
        z = numeric(path, data, z_key, np.int64).reshape(-1)
        positions = numeric(path, data, r_key) * length_unit
        energies = forces = None
        if e_key in data and f_key in data:
            energies = numeric(path, data, e_key).reshape(-1) * energy_unit
            forces = numeric(path, data, f_key) * (energy_unit / length_unit)
    structures, _ = conformer_structures(str(path), z, positions, energies, forces, {"molecule": path.stem},
                                         (r_key, e_key, f_key), require_labels)
    return iter(structures)


def numeric(path: Path, data, key: str, dtype=np.float64) -> np.ndarray:
    """Array ``key`` of an open npz as ``dtype``; InvalidStructureError naming the file and key for an object array
    (pickled Python objects, never loaded), a damaged member or values that are not numbers."""
    try:
        array = data[key]
    except ValueError as exc:  # numpy refuses object arrays when allow_pickle is off
        raise InvalidStructureError(f"{path}: array {key!r} holds Python objects (an object array, which would need "
                                    f"unpickling, i.e. running code from the file); save it as a numeric array") \
            from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidStructureError(f"{path}: array {key!r} cannot be read ({exc}); the file is damaged") from exc
    if array.dtype.kind not in "biuf":
        raise InvalidStructureError(f"{path}: array {key!r} has dtype {array.dtype}, not numbers")
    return array.astype(dtype)
