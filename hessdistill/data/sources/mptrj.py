"""MPtrj JSON (``mp-id → frame-id → frame``) as periodic Structure records, without needing pymatgen.

A frame holds ``structure`` (a pymatgen Structure dict: ``lattice.matrix`` (3, 3) Å and ``sites`` with
``species[0].element`` and Cartesian ``xyz`` Å), ``uncorrected_total_energy`` / ``corrected_total_energy`` (eV),
``force`` (N, 3) eV/Å, ``stress``, ``magmom``, ``bandgap``. The file is parsed incrementally (``ijson``), one
material (mp-id) at a time, so reading the full 12 GB file holds one material's frames in memory, not the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from hessdistill.data.progress import progress
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
               ) -> Iterator[Structure]:
    """Every frame of an MPtrj-format JSON file, one at a time as the file is parsed. energy_key:
    ``uncorrected_total_energy`` (raw DFT, eV; default) or ``corrected_total_energy`` (with Materials Project's
    compatibility corrections). A missing file raises at once; malformed content when the stream reaches it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MPtrj file not found: {path}")
    return _frames(path, energy_key, require_labels)


def _frames(path: Path, energy_key: str, require_labels: bool) -> Iterator[Structure]:
    import ijson

    count = 0
    with path.open("rb") as handle, progress(desc=f"reading {path.name}", unit="B", unit_scale=True,
                                             total=path.stat().st_size) as bar:
        try:
            for mp_id, frames in ijson.kvitems(handle, "", use_float=True):  # one material at a time
                if not isinstance(frames, dict):
                    raise InvalidStructureError(f"{path}[{mp_id}]: expected an object frame-id → frame, found "
                                                f"{type(frames).__name__}")
                for frame_id, frame in frames.items():
                    s = _frame_structure(frame, f"{path}[{mp_id}][{frame_id}]", energy_key, require_labels)
                    s.info.update(mp_id=mp_id, frame_id=frame_id)
                    count += 1
                    yield s
                bar.update(handle.tell() - bar.n)
                bar.set_postfix(frames=count, refresh=False)
        except ijson.JSONError as exc:
            raise InvalidStructureError(f"{path}: not valid JSON after {count} frames ({exc})") from exc
    if not count:
        raise InvalidStructureError(f"{path}: holds no frames; expected MPtrj's layout {{mp-id: {{frame-id: frame}}}}")
