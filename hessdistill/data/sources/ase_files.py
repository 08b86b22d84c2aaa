"""Any ASE-readable file (extxyz, ASE db, ...) as Structure records, with unit conversion, read frame by frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ase.io

from hessdistill.data.progress import progress
from hessdistill.data.structures import InvalidStructureError, Structure, unit_factors


def read_ase(path: str | Path, energy_unit: float = 1.0, length_unit: float = 1.0, index: str = ":",
             format: str | None = None, require_labels: bool = True) -> Iterator[Structure]:
    """Every frame of ``path`` (``index``: an ASE slice string), one at a time (``ase.io.iread``); energy_unit/
    length_unit convert the file's units to eV and Å (e.g. kcal/mol: ``ase.units.kcal / ase.units.mol``).
    A missing file raises at once; a malformed frame raises InvalidStructureError naming file and frame when reached."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"structure file not found: {path}{where}")
    energy_unit, length_unit = unit_factors(path, energy_unit, length_unit)
    return _frames(path, energy_unit, length_unit, index, format, require_labels)


def _frames(path: Path, energy_unit: float, length_unit: float, index: str, format: str | None,
            require_labels: bool) -> Iterator[Structure]:
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
            yield Structure.from_atoms(atoms, source=f"{path}[frame {k}]", energy_unit=energy_unit,
                                       length_unit=length_unit).validate(require_labels)
            k += 1
            bar.update()
