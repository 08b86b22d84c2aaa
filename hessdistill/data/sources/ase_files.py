"""Any ASE-readable file (extxyz, ASE db, ...) as Structure records, with unit conversion, read frame by frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ase.io
import numpy as np

from hessdistill.data.progress import progress
from hessdistill.data.structures import InvalidStructureError, Structure, unit_factors


def read_ase(path: str | Path, energy_unit: float = 1.0, length_unit: float = 1.0, index: str = ":",
             format: str | None = None, require_labels: bool = True, energy_key: str = "energy",
             forces_key: str = "forces") -> Iterator[Structure]:
    """Every frame of ``path`` (``index``: an ASE slice string), one at a time (``ase.io.iread``); energy_unit/
    length_unit convert the file's units to eV and Å (e.g. kcal/mol: ``ase.units.kcal / ase.units.mol``).
    energy_key / forces_key: the names of the reference labels in the file (e.g. ``REF_energy`` and ``REF_forces``
    in MACE-style extxyz; ``Structure.from_atoms``).
    A missing file raises at once; a malformed frame raises InvalidStructureError naming file and frame when reached,
    a frame without labels naming the keys it does have."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"structure file not found: {path}{where}")
    energy_unit, length_unit = unit_factors(path, energy_unit, length_unit)
    return _frames(path, energy_unit, length_unit, index, format, require_labels, (energy_key, forces_key))


def missing_labels(atoms, structure: Structure, energy_key: str, forces_key: str) -> str:
    """The error for a frame read without its labels: which are missing, the keys the frame does have, and how to
    name them in the subset's source."""
    results = atoms.calc.results if atoms.calc is not None else {}
    scalars = sorted(k for k, v in {**atoms.info, **results}.items() if np.ndim(v) == 0)
    arrays = sorted({k for k, v in {**atoms.arrays, **results}.items() if np.ndim(v) == 2} - {"positions"})
    missing = [f"{what} (key {key!r})" for what, key, value in (("energy", energy_key, structure.energy),
                                                                ("forces", forces_key, structure.forces))
               if value is None]
    energy = next((k for k in scalars if "energy" in k.lower()), "REF_energy")
    forces = next((k for k in arrays if "force" in k.lower()), "REF_forces")
    return (f"{structure.source}: missing reference {' and '.join(missing)}; the frame has the per-structure keys "
            f"{scalars} and the per-atom arrays {arrays}: name the file's keys in the subset's source, e.g. "
            f"energy_key: {energy}, forces_key: {forces} (command line: subset.source.energy_key={energy} "
            f"subset.source.forces_key={forces})")


def _frames(path: Path, energy_unit: float, length_unit: float, index: str, format: str | None,
            require_labels: bool, keys: tuple[str, str]) -> Iterator[Structure]:
    with progress(desc=f"reading {path.name}", unit="frame") as bar:
        frames, k = ase.io.iread(path, index=index, format=format), 0
        while True:
            try:
                atoms = next(frames)
            except StopIteration:
                return
            except Exception as exc:  # ASE raises many types for malformed files
                raise InvalidStructureError(f"{path}: cannot be read by ASE after {k} frames "
                                            f"({type(exc).__name__}: {exc})") from exc
            structure = Structure.from_atoms(atoms, source=f"{path}[frame {k}]", energy_unit=energy_unit,
                                             length_unit=length_unit, energy_key=keys[0], forces_key=keys[1])
            if require_labels and (structure.energy is None or structure.forces is None):
                raise InvalidStructureError(missing_labels(atoms, structure, *keys))
            yield structure.validate(require_labels)
            k += 1
            bar.update()
