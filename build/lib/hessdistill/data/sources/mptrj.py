"""MPtrj JSON (``mp-id → frame-id → frame``) as periodic Structure records, without needing pymatgen.

A frame holds ``structure`` (a pymatgen Structure dict: ``lattice.matrix`` (3, 3) Å and ``sites`` with
``species[0].element`` and Cartesian ``xyz`` Å), ``uncorrected_total_energy`` / ``corrected_total_energy`` (eV),
``force`` (N, 3) eV/Å, ``stress``, ``magmom``, ``bandgap``. The whole JSON is parsed at once: slice big files
into subsets before reading them here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from hessdistill.data.structures import InvalidStructureError, Structure


def _frame_structure(frame: dict, where: str, energy_key: str, require_labels: bool) -> Structure:
    try:
        structure = frame["structure"]
        cell = np.asarray(structure["lattice"]["matrix"], dtype=np.float64)
        sites = structure["sites"]
        symbols = [site["species"][0]["element"] for site in sites]
        positions = np.asarray([site["xyz"] for site in sites], dtype=np.float64)
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidStructureError(f"{where}: malformed 'structure' ({type(exc).__name__}: {exc})") from exc
    unknown = sorted({s for s in symbols if s not in atomic_numbers})
    if unknown:
        raise InvalidStructureError(f"{where}: unknown element symbol(s) {unknown}")
    energy = frame.get(energy_key)
    forces = frame.get("force")
    info = {key: frame[key] for key in ("mp_id", "bandgap") if isinstance(frame.get(key), (str, int, float))}
    return Structure(z=[atomic_numbers[s] for s in symbols], positions=positions, cell=cell, pbc=[True] * 3,
                     energy=None if energy is None else float(energy),
                     forces=None if forces is None else np.asarray(forces, dtype=np.float64),
                     info=info, source=where).validate(require_labels)


def read_mptrj(path: str | Path, energy_key: str = "uncorrected_total_energy", require_labels: bool = True
               ) -> list[Structure]:
    """Every frame of an MPtrj-format JSON file. energy_key: ``uncorrected_total_energy`` (raw DFT, eV; default)
    or ``corrected_total_energy`` (with Materials Project's compatibility corrections)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MPtrj file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidStructureError(f"{path}: not valid JSON ({exc})") from exc
    structures = []
    for mp_id, frames in data.items():
        for frame_id, frame in frames.items():
            s = _frame_structure(frame, f"{path}[{mp_id}][{frame_id}]", energy_key, require_labels)
            s.info.update(mp_id=mp_id, frame_id=frame_id)
            structures.append(s)
    return structures
