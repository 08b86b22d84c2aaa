"""SPICE HDF5 files (one group per molecule) as Structure records, converted to eV and Å.

Layout (SPICE 1.x/2.x): per molecule group ``atomic_numbers`` (N,), ``conformations`` (C, N, 3) Bohr,
``dft_total_energy`` / ``formation_energy`` (C,) Hartree, ``dft_total_gradient`` (C, N, 3) Hartree/Bohr,
``subset`` and ``smiles`` (a string, bytes, or an array holding one). Forces = −gradient. Read molecule by
molecule: memory holds one molecule's conformers, not the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from ase.units import Bohr, Hartree

from hessdistill.data.progress import progress
from hessdistill.data.sources.conformers import conformer_structures, labelled
from hessdistill.data.structures import InvalidStructureError, Structure

log = logging.getLogger(__name__)

GRADIENT_KEY = "dft_total_gradient"


def _as_str(value) -> str:
    """A scalar string from h5py: str, bytes, or a (1,)-array of either."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one string, got array of shape {value.shape}")
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _read_text(group, key: str) -> str | None:
    return _as_str(group[key][()]) if key in group else None


def read_spice(path: str | Path, energy_key: str = "dft_total_energy", subsets: Iterable[str] | None = None,
               require_labels: bool = True) -> Iterator[Structure]:
    """Every conformer of every molecule group in a SPICE HDF5 file, one molecule read at a time.

    energy_key: the per-conformer energy dataset (Hartree), e.g. ``dft_total_energy`` or ``formation_energy``.
    subsets: keep only molecules whose ``subset`` string is in this collection (None: all); others are skipped
    before their arrays are read.
    require_labels: if False, molecules lacking the energy/gradient datasets are read without labels.
    Conformers whose energy or gradient contains NaN are skipped (count logged); structural problems
    (missing datasets, shape mismatches) raise InvalidStructureError naming file and group, when reached.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SPICE file not found: {path}")
    if not h5py.is_hdf5(path):
        raise InvalidStructureError(f"{path}: cannot be opened as HDF5 (not an HDF5 file)")
    keep = None if subsets is None else {str(s) for s in ([subsets] if isinstance(subsets, str) else subsets)}
    return _molecules(path, energy_key, keep, require_labels)


def _molecules(path: Path, energy_key: str, keep: set[str] | None, require_labels: bool) -> Iterator[Structure]:
    import h5py

    skipped = 0
    with h5py.File(path, "r") as h5:
        for name in progress(h5.keys(), desc=f"reading {path.name}", unit="molecule", total=len(h5)):
            group = h5[name]
            where = f"{path}[{name}]"
            if not isinstance(group, h5py.Group):
                raise InvalidStructureError(f"{where}: expected a molecule group, found a dataset")
            try:
                subset = _read_text(group, "subset")
                smiles = _read_text(group, "smiles")
            except ValueError as exc:
                raise InvalidStructureError(f"{where}: {exc}") from exc
            if keep is not None and subset not in keep:
                continue
            has_labels = labelled(group, where, ("atomic_numbers", "conformations"), (energy_key, GRADIENT_KEY),
                                  require_labels)
            z = np.asarray(group["atomic_numbers"][()]).astype(np.int64)
            if z.ndim != 1:
                raise InvalidStructureError(f"{where}: atomic_numbers has shape {z.shape}, expected (N,)")
            positions = np.asarray(group["conformations"][()], dtype=np.float64) * Bohr
            energies = forces = None
            if has_labels:
                energies = np.asarray(group[energy_key][()], dtype=np.float64).reshape(-1) * Hartree
                forces = -np.asarray(group[GRADIENT_KEY][()], dtype=np.float64) * (Hartree / Bohr)
            info = {"molecule": name, **({"subset": subset} if subset is not None else {}),
                    **({"smiles": smiles} if smiles is not None else {})}
            found, n_skipped = conformer_structures(where, z, positions, energies, forces, info,
                                                    ("conformations", energy_key, GRADIENT_KEY), require_labels)
            skipped += n_skipped
            yield from found
    if skipped:
        log.warning("%s: skipped %d conformer(s) with NaN/inf energy or gradient", path, skipped)
