"""Any ASE-readable file (extxyz, ASE db, ...) as Structure records, with unit conversion."""

from __future__ import annotations

from pathlib import Path

import ase.io

from hessdistill.data.structures import InvalidStructureError, Structure, unit_factors


def read_ase(path: str | Path, energy_unit: float = 1.0, length_unit: float = 1.0, index: str = ":",
             format: str | None = None, require_labels: bool = True) -> list[Structure]:
    """Read every frame of ``path``; energy_unit/length_unit convert the file's units to eV and Å
    (e.g. kcal/mol: ``ase.units.kcal / ase.units.mol``). Raises InvalidStructureError naming file and frame."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"structure file not found: {path}{where}")
    energy_unit, length_unit = unit_factors(path, energy_unit, length_unit)
    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as exc:  # ASE raises many types for malformed files
        raise InvalidStructureError(f"{path}: cannot be read by ASE ({type(exc).__name__}: {exc})") from exc
    return [Structure.from_atoms(a, source=f"{path}[frame {k}]", energy_unit=energy_unit,
                                 length_unit=length_unit).validate(require_labels) for k, a in enumerate(frames)]
