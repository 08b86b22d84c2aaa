"""ANI / COMP6-style HDF5 files as Structure records, converted to eV and Å.

Layout: groups (possibly nested) each holding ``species`` (N,) element symbols (bytes/str) or atomic
numbers, ``coordinates`` (C, N, 3), ``energies`` (C,) and ``forces`` (C, N, 3). Every group that has
``coordinates`` is one molecule. In COMP6 (and the ANI-1x release) energies are Hartree, coordinates Å, and
the ``forces`` field is the energy *gradient* in Hartree/Å, hence ``forces_are_gradients=True``. Read molecule by
molecule: memory holds one molecule's conformers, not the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as SYMBOL_TO_Z
from ase.units import Hartree

from hessdistill.data.progress import progress
from hessdistill.data.sources.conformers import conformer_structures, labelled
from hessdistill.data.structures import InvalidStructureError, Structure, unit_factors

log = logging.getLogger(__name__)


def _species_to_z(raw, where: str) -> np.ndarray:
    arr = np.asarray(raw).reshape(-1)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    out = []
    for s in arr:
        sym = bytes(s).decode("utf-8") if isinstance(s, (bytes, np.bytes_)) else str(s)
        sym = sym.strip()
        if sym not in SYMBOL_TO_Z or sym == "X":
            raise InvalidStructureError(f"{where}: unknown element symbol {sym!r} in species")
        out.append(SYMBOL_TO_Z[sym])
    return np.asarray(out, dtype=np.int64)


def read_ani_hdf5(path: str | Path, energy_key: str = "energies", forces_key: str = "forces",
                  forces_are_gradients: bool = True, energy_unit: float = Hartree, length_unit: float = 1.0,
                  require_labels: bool = True) -> Iterator[Structure]:
    """Every conformer of every molecule group (groups with ``coordinates``, walked recursively), one molecule read
    at a time.

    energy_unit / length_unit: factors converting the file's units to eV and Å (forces scale by
    energy_unit/length_unit). forces_are_gradients: negate the ``forces_key`` field (COMP6, ANI-1x).
    Conformers with NaN/inf energy or forces are skipped (count logged); missing datasets and shape
    mismatches raise InvalidStructureError naming file and group, when reached.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ANI HDF5 file not found: {path}")
    energy_unit, length_unit = unit_factors(path, energy_unit, length_unit)
    if not h5py.is_hdf5(path):
        raise InvalidStructureError(f"{path}: cannot be opened as HDF5 (not an HDF5 file)")
    sign = -1.0 if forces_are_gradients else 1.0
    return _molecules(path, energy_key, forces_key, sign, energy_unit, length_unit, require_labels)


def _molecules(path: Path, energy_key: str, forces_key: str, sign: float, energy_unit: float, length_unit: float,
               require_labels: bool) -> Iterator[Structure]:
    import h5py

    groups: list[str] = []
    skipped = 0
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: groups.append(name)
                     if isinstance(obj, h5py.Group) and "coordinates" in obj else None)
        for name in progress(groups, desc=f"reading {path.name}", unit="molecule"):
            group = h5[name]
            where = f"{path}[{name}]"
            has_labels = labelled(group, where, ("species",), (energy_key, forces_key), require_labels)
            z = _species_to_z(group["species"][()], where)
            positions = np.asarray(group["coordinates"][()], dtype=np.float64) * length_unit
            if positions.ndim == 2:  # a single conformer stored without the leading axis
                positions = positions[None]
            energies = forces = None
            if has_labels:
                energies = np.asarray(group[energy_key][()], dtype=np.float64).reshape(-1) * energy_unit
                forces = sign * np.asarray(group[forces_key][()], dtype=np.float64) * (energy_unit / length_unit)
                if forces.ndim == 2 and positions.shape[0] == 1:
                    forces = forces[None]
            found, n_skipped = conformer_structures(where, z, positions, energies, forces, {"molecule": name},
                                                    ("coordinates", energy_key, forces_key), require_labels)
            skipped += n_skipped
            yield from found
    if skipped:
        log.warning("%s: skipped %d conformer(s) with NaN/inf energy or forces", path, skipped)
