"""HessianStore: one HDF5 file per data set/subset holding structures, reference labels and teacher labels.

Layout (all per-atom arrays are ragged, concatenated over structures, indexed by ``offsets``)::

    /                      attrs: format="hessdistill-store", version, units (JSON)
    /structures/z          (A,) int16            atomic numbers, A = Σ N_i
    /structures/positions  (A, 3) float64        Å
    /structures/offsets    (M+1,) int64          structure i's atoms are offsets[i]:offsets[i+1]
    /structures/cell       (M, 3, 3) float64     Å (zeros when non-periodic)
    /structures/pbc        (M, 3) bool
    /structures/energy     (M,) float64          reference energy, eV
    /structures/forces     (A, 3) float64        reference forces, eV/Å
    /structures/info       (M,) str              JSON metadata per structure (molecule, seed, source, ...)
    /teachers/<name>/      attrs: teacher, level_of_theory, method, hessian_dtype, created
    /teachers/<name>/energy           (M,) float64       eV
    /teachers/<name>/forces           (A, 3) float64     eV/Å
    /teachers/<name>/hessian          (Σ 9 N_i²,) float32 eV/Å², structure i's (3N_i, 3N_i) row-major block
    /teachers/<name>/hessian_offsets  (M+1,) int64
    /teachers/<name>/asymmetry        (M,) float32       max |H − Hᵀ| per structure, eV/Å² (diagnostic)
    /teachers/<name>/done             (M,) bool          completion mark, written after the data

A teacher's rows are only trusted where ``done`` is set, so an interrupted precompute resumes safely.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from hessdistill.data.structures import Structure

FORMAT = "hessdistill-store"
VERSION = 1
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "hessian": "eV/Angstrom^2"}


class StoreError(ValueError):
    """A store file that is missing, malformed or lacks what was asked for; the message names the file."""


def write_structures(path: str | Path, structures: Sequence[Structure], overwrite: bool = False) -> None:
    """Create a store from validated structures (written to ``<path>.partial`` then renamed: never half-written)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not structures:
        raise StoreError(f"{path}: no structures to write")
    for s in structures:
        s.validate(require_labels=True)
    counts = np.array([s.n_atoms for s in structures])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    partial = path.with_name(path.name + ".partial")
    try:
        with h5py.File(partial, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION, units=json.dumps(UNITS), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            g = f.create_group("structures")
            g["z"] = np.concatenate([s.z for s in structures]).astype(np.int16)
            g["positions"] = np.concatenate([s.positions for s in structures])
            g["offsets"] = offsets
            g["cell"] = np.stack([s.cell for s in structures])
            g["pbc"] = np.stack([s.pbc for s in structures])
            g["energy"] = np.array([s.energy for s in structures], dtype=np.float64)
            g["forces"] = np.concatenate([s.forces for s in structures])
            info = [json.dumps({**s.info, "source": s.source}, default=str) for s in structures]
            g.create_dataset("info", data=np.array(info, dtype=object), dtype=h5py.string_dtype())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(path)


class HessianStore:
    """Read access (and teacher writes) to a store file. Opens h5py lazily so it can cross process forks."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"store not found: {self.path}")
        self.mode = mode
        self._file: h5py.File | None = None
        self._pid = os.getpid()
        f = self.file
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a hessdistill store (format attribute {f.attrs.get('format')!r})")
        self.offsets = f["structures/offsets"][:]

    @property
    def file(self) -> h5py.File:
        """The open h5py file of *this* process (a DataLoader worker forked with a handle reopens its own)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, self.mode)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # h5py handles cannot be pickled into spawned workers: reopen there
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def n_atoms(self, i: int | None = None):
        counts = np.diff(self.offsets)
        return counts if i is None else int(counts[i])

    def structure(self, i: int) -> Structure:
        """Structure i with its reference labels (eV, Å, eV/Å)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        g = self.file["structures"]
        return Structure(
            z=g["z"][a:b], positions=g["positions"][a:b], cell=g["cell"][i], pbc=g["pbc"][i],
            energy=float(g["energy"][i]), forces=g["forces"][a:b], info=json.loads(g["info"][i]),
            source=f"{self.path}[{i}]",
        )

    def structures(self, indices: Iterable[int] | None = None):
        for i in range(len(self)) if indices is None else indices:
            yield self.structure(int(i))

    # ---- teachers -------------------------------------------------------------------------------------
    def teachers(self) -> list[str]:
        return list(self.file["teachers"].keys()) if "teachers" in self.file else []

    def teacher_group(self, teacher: str) -> h5py.Group:
        if teacher not in self.teachers():
            raise StoreError(f"{self.path} has no labels from teacher {teacher!r} (has: {self.teachers()}); run precompute")
        return self.file["teachers"][teacher]

    def create_teacher(self, teacher: str, attrs: dict) -> h5py.Group:
        """Allocate (or reopen, for resuming) a teacher group sized for every structure."""
        f = self.file
        if "teachers" in f and teacher in f["teachers"]:
            return f["teachers"][teacher]
        n = self.n_atoms()
        hoff = np.concatenate([[0], np.cumsum(9 * n.astype(np.int64) ** 2)])
        g = f.require_group("teachers").create_group(teacher)
        g.attrs.update({k: v for k, v in attrs.items() if v is not None}, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        m, a = len(self), int(self.offsets[-1])
        g.create_dataset("energy", (m,), np.float64)
        g.create_dataset("forces", (a, 3), np.float64)
        g.create_dataset("hessian", (int(hoff[-1]),), np.float32, chunks=(int(min(hoff[-1], 1 << 16)),))
        g["hessian_offsets"] = hoff
        g.create_dataset("asymmetry", (m,), np.float32)
        g.create_dataset("done", (m,), bool)
        f.flush()
        return g

    def write_teacher(self, teacher: str, i: int, energy: float, forces: np.ndarray, hessian: np.ndarray) -> None:
        """Write one structure's teacher labels, flush, then set its completion mark and flush again."""
        g = self.teacher_group(teacher)
        n = self.n_atoms(i)
        if forces.shape != (n, 3) or hessian.shape != (3 * n, 3 * n):
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} gave forces {forces.shape} and Hessian "
                             f"{hessian.shape}; expected ({n}, 3) and ({3 * n}, {3 * n})")
        if not (np.isfinite(hessian).all() and np.isfinite(forces).all() and np.isfinite(energy)):
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} returned NaN/inf labels")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        h0, h1 = g["hessian_offsets"][i : i + 2]
        g["energy"][i] = energy
        g["forces"][a:b] = forces
        g["hessian"][h0:h1] = hessian.astype(np.float32).reshape(-1)
        g["asymmetry"][i] = float(np.abs(hessian - hessian.T).max())
        self.file.flush()
        g["done"][i] = True
        self.file.flush()

    def teacher_done(self, teacher: str) -> np.ndarray:
        return self.teacher_group(teacher)["done"][:] if teacher in self.teachers() else np.zeros(len(self), bool)

    def teacher_labels(self, teacher: str, i: int) -> tuple[float, np.ndarray]:
        """Teacher energy (eV) and forces (N, 3) eV/Å of structure i."""
        g = self.teacher_group(teacher)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return float(g["energy"][i]), g["forces"][a:b]

    def hessian(self, teacher: str, i: int) -> np.ndarray:
        """Full teacher Hessian of structure i, (3N, 3N) eV/Å²."""
        return self.hessian_rows(teacher, i, np.arange(3 * self.n_atoms(i)))

    def hessian_rows(self, teacher: str, i: int, rows: np.ndarray) -> np.ndarray:
        """Rows of structure i's teacher Hessian, (len(rows), 3N) eV/Å²; reads only those rows."""
        g = self.teacher_group(teacher)
        if not g["done"][i]:
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} Hessian not computed yet; run precompute")
        width = 3 * self.n_atoms(i)
        h0 = int(g["hessian_offsets"][i])
        data = g["hessian"]
        return np.stack([data[h0 + r * width : h0 + (r + 1) * width] for r in np.asarray(rows).tolist()])
