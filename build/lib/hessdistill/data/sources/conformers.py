"""Shared by the HDF5 readers: one molecule's stacked conformers → validated Structure records."""

from __future__ import annotations

import numpy as np

from hessdistill.data.structures import InvalidStructureError, Structure


def labelled(group, where: str, required: tuple[str, ...], labels: tuple[str, str], require_labels: bool) -> bool:
    """Check an HDF5 molecule group has its ``required`` datasets (and the two ``labels`` datasets when
    ``require_labels``); raise InvalidStructureError naming ``where`` otherwise. Returns whether labels are there."""
    for key in required + (labels if require_labels else ()):
        if key not in group:
            raise InvalidStructureError(f"{where}: missing dataset {key!r}")
    return all(key in group for key in labels)


def conformer_structures(where: str, z: np.ndarray, positions: np.ndarray, energies: np.ndarray | None,
                         forces: np.ndarray | None, info: dict, labels: tuple[str, str, str],
                         require_labels: bool) -> tuple[list[Structure], int]:
    """Structures of one molecule and how many conformers were skipped for NaN/inf labels.

    z (N,); positions (C, N, 3) Å; energies (C,) eV and forces (C, N, 3) eV/Å, both None when unlabelled.
    where: "file[group]" for messages; labels: the file's names of the position, energy and force datasets.
    Shape mismatches raise InvalidStructureError naming ``where``.
    """
    n = z.shape[0]
    if positions.ndim != 3 or positions.shape[1:] != (n, 3):
        raise InvalidStructureError(f"{where}: {labels[0]} has shape {positions.shape}, expected (C, {n}, 3) "
                                    f"for {n} atoms")
    n_conf = positions.shape[0]
    if energies is not None:
        if energies.shape != (n_conf,):
            raise InvalidStructureError(f"{where}: {labels[1]} has {energies.shape[0]} values, expected {n_conf} "
                                        f"(one per conformation)")
        if forces.shape != (n_conf, n, 3):
            raise InvalidStructureError(f"{where}: {labels[2]} has shape {forces.shape}, expected ({n_conf}, {n}, 3)")
    structures, skipped = [], 0
    for k in range(n_conf):
        e = f = None
        if energies is not None:
            if not (np.isfinite(energies[k]) and np.isfinite(forces[k]).all()):
                skipped += 1
                continue
            e, f = float(energies[k]), forces[k]
        structures.append(Structure(z=z, positions=positions[k], energy=e, forces=f, info={**info, "conformer": k},
                                    source=f"{where}[conformer {k}]").validate(require_labels))
    return structures, skipped
