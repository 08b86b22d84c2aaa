"""Any ASE-readable file (extxyz, ASE db, ...) as Structure records, with unit conversion, read frame by frame.

``read_frames`` is the one reader of structure files a user hands over (sources, ``hessdistill-predict``,
``hessdistill-label --structures``): xyz/extxyz go through ``xyz_frames`` (atom counts bounded by the file), other
formats through ``ase.io.iread``; whatever is wrong with a file is one InvalidStructureError naming it and the frame.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import ase.io
import numpy as np
from ase.io.formats import filetype, string2index

from hessdistill.data.progress import progress
from hessdistill.data.sources.xyz_frames import parse_frame, xyz_frames
from hessdistill.data.structures import InvalidStructureError, Structure, unit_factors

XYZ_FORMATS = ("xyz", "extxyz")


def read_ase(path: str | Path, energy_unit: float = 1.0, length_unit: float = 1.0, index: str = ":",
             format: str | None = None, require_labels: bool = True, energy_key: str = "energy",
             forces_key: str = "forces") -> Iterator[Structure]:
    """Every frame of ``path`` (``index``: an ASE slice string), one at a time (``read_frames``); energy_unit/
    length_unit convert the file's units to eV and Å (e.g. kcal/mol: ``ase.units.kcal / ase.units.mol``).
    energy_key / forces_key: the names of the reference labels in the file (e.g. ``REF_energy`` and ``REF_forces``
    in MACE-style extxyz; ``Structure.from_atoms``).
    A missing, empty or unreadable file raises at once; a malformed frame raises InvalidStructureError naming file
    and frame when reached, a frame without labels naming the keys it does have."""
    energy_unit, length_unit = unit_factors(path, energy_unit, length_unit)
    frames = read_frames(path, index, format)
    return _structures(Path(path), frames, energy_unit, length_unit, require_labels, (energy_key, forces_key))


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


def _structures(path: Path, frames: Iterator[tuple[int, object]], energy_unit: float, length_unit: float,
                require_labels: bool, keys: tuple[str, str]) -> Iterator[Structure]:
    with progress(desc=f"reading {path.name}", unit="frame") as bar:
        for k, atoms in frames:
            structure = Structure.from_atoms(atoms, source=f"{path}[frame {k}]", energy_unit=energy_unit,
                                             length_unit=length_unit, energy_key=keys[0], forces_key=keys[1])
            if require_labels and (structure.energy is None or structure.forces is None):
                raise InvalidStructureError(missing_labels(atoms, structure, *keys))
            yield structure.validate(require_labels)
            bar.update()

def file_format(path: Path, format: str | None) -> str:
    """The ASE format of ``path``: ``format`` if given, else from its name, else from its first bytes."""
    if format is not None:
        return format
    try:
        return filetype(path, read=False)
    except Exception:  # noqa: BLE001 (ASE raises several types for names it does not know)
        pass
    try:
        return filetype(path)
    except Exception as exc:  # noqa: BLE001
        raise InvalidStructureError(f"{path}: ASE does not know this file's format ({exc}); pass the format "
                                    f"(e.g. format=extxyz)") from exc


def read_frames(path: str | Path, index: str = ":", format: str | None = None) -> Iterator[tuple[int, object]]:
    """(frame number in the file, ASE Atoms) of every frame of ``path`` selected by ``index`` (an ASE slice
    string), read one at a time. A missing file raises FileNotFoundError and an empty one InvalidStructureError at
    once; other errors (binary content, an atom count the file cannot hold, a non-numeric coordinate, an unknown
    element) raise InvalidStructureError naming the file and frame when that frame is reached."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"structure file not found: {path}{where}")
    if path.stat().st_size == 0:
        raise InvalidStructureError(f"{path}: empty file (0 bytes), no structures")
    format = file_format(path, format)
    if format in XYZ_FORMATS:
        return ((frame.index, parse_frame(path, frame, format)) for frame in _selected(xyz_frames(path), index))
    return _ase_frames(path, index, format)


def _selected(frames: Iterator, index: str) -> Iterator:
    """The frames an ASE index string selects (``":"``, ``"::10"``, ``"-1"``, ...) from a stream of them."""
    chosen = string2index(index)
    if isinstance(chosen, int):
        chosen = slice(chosen, chosen + 1 or None)
    if (chosen.start or 0) >= 0 and (chosen.stop or 0) >= 0 and (chosen.step or 1) > 0:
        return itertools.islice(frames, chosen.start, chosen.stop, chosen.step)
    return iter(list(frames)[chosen])  # counting from the end needs them all (split into frames, not parsed)


def _ase_frames(path: Path, index: str, format: str) -> Iterator[tuple[int, object]]:
    frames, k = ase.io.iread(path, index=index, format=format), 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # ASE raises many types for malformed files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise InvalidStructureError(f"{path}: cannot be read by ASE as {format} after {k} frames "
                                        f"({type(exc).__name__}: {reason})") from exc
        yield k, atoms
        k += 1
