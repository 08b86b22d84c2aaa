"""HessianStore: one HDF5 file per data set/subset holding structures, reference labels and teacher labels.

Layout (all per-atom arrays are ragged, concatenated over structures, indexed by ``offsets``)::

    /                      attrs: format="hessdistill-store", version, units (JSON); energy_statistics (JSON:
                           per-element references (119,) eV and force RMS eV/Å of all structures, computed as they
                           were written; ``data.statistics``)
    /structures/z          (A,) int16            atomic numbers, A = Σ N_i
    /structures/positions  (A, 3) float64        Å
    /structures/offsets    (M+1,) int64          structure i's atoms are offsets[i]:offsets[i+1]
    /structures/cell       (M, 3, 3) float64     Å (zeros when non-periodic)
    /structures/pbc        (M, 3) bool
    /structures/energy     (M,) float64          reference energy, eV (NaN: none, a store for reference=teacher)
    /structures/forces     (A, 3) float64        reference forces, eV/Å (NaN: none)
    /structures/info       (M,) str              JSON metadata per structure (molecule, seed, source, ...)
    /teachers/<name>/      attrs: teacher, level_of_theory, method, hessian_layout, hessian_dtype, created
    /teachers/<name>/energy           (M,) float64       eV
    /teachers/<name>/forces           (A, 3) float64     eV/Å
    /teachers/<name>/hessian          (Σ size_i,) float32|float16  eV/Å², one block per structure:
                                      layout full: (3N_i, 3N_i) row-major; upper: the upper triangle row by row,
                                      3N_i(3N_i+1)/2 values; rows: k rows (k, 3N_i)
    /teachers/<name>/hessian_row_index (M, k) int32       layout rows only: which rows are stored
    /teachers/<name>/hessian_offsets  (M+1,) int64
    /teachers/<name>/asymmetry        (M,) float32       max |H − Hᵀ| per structure, eV/Å² (diagnostic)
    /teachers/<name>/done             (M,) bool          completion mark, written after the data
    /teachers/<name>/node_features    (A, F) float32     optional: teacher node features (n2n baseline)
    /teachers/<name>/element_z, element_embeddings  (E,), (E, F_e)  optional: element embeddings (a2a baseline)

    /structures/digest, /teachers/<name>/digest  (B + 1,) uint64  content digests of the group's datasets and their
                                      seal (``store_digests``; absent in stores of older versions)

A teacher's rows are only trusted where ``done`` is set, so an interrupted precompute resumes safely. Every change
to the file's structure (a new store, teacher group or node features) is written into a side file and renamed over
the store (``store_files``), so a failed write leaves the store as it was; writers hold the store's lock around
each such rebuild and each batch of label writes, and move to the new file when another writer replaced it. Every
open refuses a file that is not self-contained (links out of it, virtual datasets, external storage); the index
arrays are checked against the datasets before they are used (``store_checks``), and the datasets against their
content digests, sampled, when the store is opened and a teacher group first used (``store_digests``). The
/structures datasets are chunked and written chunk by chunk (``write_structures`` takes a stream), and whole-store
passes (fingerprint, statistics, info) read them in blocks of ≤ ``BLOCK_ATOMS`` atoms: nothing reads a whole array.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from hessdistill.data import store_digests
from hessdistill.data.progress import progress
from hessdistill.data.splits import store_fingerprint
from hessdistill.data.statistics import EnergyStatistics
from hessdistill.data.store_checks import LAYOUTS, check_self_contained, check_structures, check_teacher, hessian_sizes
from hessdistill.data.store_files import (
    StoreError,
    file_identity,
    h5_errno,
    open_h5,
    preallocated,
    replacing,
    require_space,
    store_lock,
)
from hessdistill.data.structures import Structure

FORMAT = "hessdistill-store"
VERSION = 1
METADATA_BYTES = 2**20  # room for a rebuilt store's HDF5 metadata, on top of its datasets
BLOCK_READ = 2**16  # a full-layout Hessian block up to this many values is read whole (256 KiB of float32)
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "hessian": "eV/Angstrom^2"}
CHUNK_STRUCTURES = 4096  # structures validated and appended per write: a store's writer holds one such chunk
BLOCK_ATOMS = 2**20  # atoms per block of a whole-store pass (positions: 24 MiB)
# HDF5 chunk rows of the /structures datasets (per structure, per atom): one structure's read touches one or two
# chunks of ≤ 192 KiB, and the layout does not depend on how many structures each write appended
STRUCTURE_CHUNKS = {"z": 8192, "positions": 8192, "forces": 8192, "offsets": 4096, "cell": 4096, "pbc": 4096,
                    "energy": 4096, "info": 4096}


def _nbytes(datasets: dict[str, tuple[tuple, object]]) -> int:
    """Bytes of datasets given as name → (shape, dtype)."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in datasets.values())


@functools.lru_cache(maxsize=64)
def _triangle(width: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Indices of the upper triangle of a (width, width) matrix row by row (the "upper" layout's order), and the
    same entries' mirror images (i, j) → (j, i)."""
    i, j = np.triu_indices(width)
    return (i, j), (j, i)


class EmptyStoreError(StoreError):
    """A store was to be written from no structures."""


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _structure_datasets(f: h5py.File) -> h5py.Group:
    """The empty, extendable /structures datasets (see the module docstring for shapes and units)."""
    g = f.create_group("structures")
    shapes = {"z": ((0,), np.int16), "positions": ((0, 3), np.float64), "cell": ((0, 3, 3), np.float64),
              "pbc": ((0, 3), bool), "energy": ((0,), np.float64), "forces": ((0, 3), np.float64),
              "info": ((0,), h5py.string_dtype())}
    for name, (shape, dtype) in shapes.items():
        g.create_dataset(name, shape, dtype, maxshape=(None, *shape[1:]), chunks=(STRUCTURE_CHUNKS[name], *shape[1:]))
    g.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(STRUCTURE_CHUNKS["offsets"],))
    return g


def _append(g: h5py.Group, chunk: list[Structure], require_labels: bool = True) -> None:
    """Validate a chunk of structures and append it to the /structures datasets (a missing label as NaN)."""
    for s in chunk:
        s.validate(require_labels=require_labels)
    m0, a0 = g["energy"].shape[0], g["z"].shape[0]
    counts = np.array([s.n_atoms for s in chunk], dtype=np.int64)
    m1, a1 = m0 + len(chunk), a0 + int(counts.sum())
    columns = {"z": np.concatenate([s.z for s in chunk]).astype(np.int16),
               "positions": np.concatenate([s.positions for s in chunk]),
               "forces": np.concatenate([np.full((s.n_atoms, 3), np.nan) if s.forces is None else s.forces
                                         for s in chunk]),
               "cell": np.stack([s.cell for s in chunk]), "pbc": np.stack([s.pbc for s in chunk]),
               "energy": np.array([np.nan if s.energy is None else s.energy for s in chunk], dtype=np.float64),
               "info": np.array([json.dumps({**s.info, "source": s.source}, default=str) for s in chunk], dtype=object)}
    for name, values in columns.items():
        start, stop = (a0, a1) if name in ("z", "positions", "forces") else (m0, m1)
        g[name].resize(stop, axis=0)
        g[name][start:stop] = values
    g["offsets"].resize(m1 + 1, axis=0)
    g["offsets"][m0 + 1 : m1 + 1] = a0 + np.cumsum(counts)


def write_structures(path: str | Path, structures: Iterable[Structure], overwrite: bool = False,
                     attrs: dict | None = None, chunk_size: int = CHUNK_STRUCTURES, require_labels: bool = True) -> int:
    """Create a store from structures (any iterable: a reader's stream is consumed once, ``chunk_size`` structures
    at a time, so memory holds one chunk); returns how many were written. Each is validated (labels required unless
    ``require_labels`` is False: structures for a teacher to label, ``reference=teacher``).

    Written to ``<path>.<pid>.partial`` then renamed (``store_files.replacing``): never half-written, and never over
    a store another process made there meanwhile (FileExistsError). The energy statistics of all labelled structures
    are accumulated on the way and recorded as the root attribute ``energy_statistics`` (JSON; floats exact);
    ``unlabelled_structures`` counts those without energy or forces; the structures' content digests
    (``store_digests``) are written last.
    attrs: extra root attributes recording how the store was made (e.g. ``subset``: the subset config as JSON)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    statistics = EnergyStatistics()
    with replacing(path, keep_existing=not overwrite) as partial, h5py.File(partial, "w") as f, \
            progress(desc=f"writing {path.name}", unit="structure") as bar:
        f.attrs.update(format=FORMAT, version=VERSION, units=json.dumps(UNITS),
                       created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        f.attrs.update(attrs or {})
        g = _structure_datasets(f)
        written = 0
        for chunk in _chunks(structures, chunk_size):
            _append(g, chunk, require_labels)
            labelled = [s for s in chunk if s.energy is not None and s.forces is not None]
            if labelled:
                statistics.add(np.concatenate([s.z for s in labelled]), [s.n_atoms for s in labelled],
                               [s.energy for s in labelled], np.concatenate([s.forces for s in labelled]))
            written += len(chunk)
            bar.update(len(chunk))
        if not written:
            raise EmptyStoreError(f"{path}: no structures to write")
        f.attrs["unlabelled_structures"] = written - statistics.n_structures
        if statistics.n_structures:
            references, force_rms = statistics.result()
            f.attrs["energy_statistics"] = json.dumps({"references": references.tolist(), "force_rms": force_rms})
        store_digests.allocate(g)
        store_digests.seal(g)
    return written


class HessianStore:
    """Read access (and teacher writes) to a store file. Opens h5py lazily so it can cross process forks."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"store not found: {self.path}")
        self.mode = mode
        self._file: h5py.File | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file whose structures were checked
        self.offsets: np.ndarray | None = None
        self._readers: dict[str, dict] = {}
        self._checked: set[str] = set()  # teacher groups checked on first use (``check_teacher``, digest)
        self._left: dict[str, int] = {}  # structures a teacher group still lacks, counted at its first write
        self._pid = os.getpid()
        self.file  # noqa: B018 (opens and checks the file)

    @property
    def file(self) -> h5py.File:
        """The open h5py file of *this* process (a DataLoader worker forked with a handle reopens its own)."""
        if self._file is None or self._pid != os.getpid():
            f = open_h5(self.path, self.mode)
            try:
                self._check_file(f)
            except BaseException:
                f.close()
                raise
            self._file, self._pid, self._readers = f, os.getpid(), {}
        return self._file

    def _check_file(self, f: h5py.File) -> None:
        """Checks of a newly opened file: self-contained (on every open), then, unless it is the very file this
        store checked before (a forked worker's reopen), its format, structures and their content digest."""
        check_self_contained(self.path, f)
        identity = file_identity(f)
        if identity == self._identity:
            return
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a hessdistill store (format attribute {f.attrs.get('format')!r})")
        offsets = check_structures(self.path, f)
        if self.offsets is not None and not np.array_equal(offsets, self.offsets):
            raise StoreError(f"{self.path} was replaced by a store of other structures while in use; rerun")
        store_digests.verify(self.path, f["structures"], complete=True)
        self.offsets, self._identity, self._checked = offsets, identity, set()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._readers, self._checked, self._left = {}, set(), {}

    @contextmanager
    def writing(self) -> Iterator[None]:
        """This store's lock held (``store_files.store_lock``) on its current file: where another writer replaced
        the store since this object opened it, the old handle is closed and the next access opens the new file
        (a write into the old one would be lost). Every write of this class takes it; hold it around a batch of
        label writes to take it once."""
        with store_lock(self.path):
            if self._file is not None and self._pid == os.getpid():
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    raise StoreError(f"{self.path} was removed while in use") from None
                if (current.st_dev, current.st_ino) != self._identity:
                    self.close()
            yield

    def __enter__(self) -> HessianStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # h5py handles cannot be pickled into spawned workers: reopen there
        state = dict(self.__dict__)
        state["_file"], state["_readers"] = None, {}
        return state

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def attributes(self) -> dict:
        """The root attributes: format, version, units and how the store was made (e.g. ``subset_select``)."""
        return dict(self.file.attrs)

    def n_atoms(self, i: int | None = None):
        counts = np.diff(self.offsets)
        return counts if i is None else int(counts[i])

    def structure(self, i: int) -> Structure:
        """Structure i with its reference labels (eV, Å, eV/Å; None where the store has none)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        g = self._structure_reader()
        energy, forces = float(g["energy"][i]), g["forces"][a:b]
        return Structure(
            z=g["z"][a:b], positions=g["positions"][a:b], cell=g["cell"][i], pbc=g["pbc"][i],
            energy=None if np.isnan(energy) else energy, forces=None if np.isnan(forces).any() else forces,
            info=json.loads(g["info"][i]), source=f"{self.path}[{i}]",
        )

    def _structure_reader(self) -> dict[str, h5py.Dataset]:
        """Open handles of the /structures datasets, kept for this process's file (see ``_reader``)."""
        f = self.file
        if "structures" not in self._readers:
            self._readers["structures"] = {name: f["structures"][name] for name in
                                           ("z", "positions", "cell", "pbc", "energy", "forces", "info")}
        return self._readers["structures"]

    def blocks(self, max_atoms: int | None = None) -> Iterator[tuple[int, int]]:
        """Consecutive structure ranges [s0, s1) of ≤ ``max_atoms`` atoms (None: ``BLOCK_ATOMS``; a larger structure
        is a block of its own), covering the store in order: the unit of every whole-store pass."""
        max_atoms, s0 = max_atoms or BLOCK_ATOMS, 0
        while s0 < len(self):
            s1 = int(np.searchsorted(self.offsets, self.offsets[s0] + max_atoms, side="right")) - 1
            s1 = min(max(s1, s0 + 1), len(self))
            yield s0, s1
            s0 = s1

    def info_values(self, key: str) -> list:
        """``info[key]`` of every structure (e.g. "molecule" for a group split); StoreError naming the first
        structure that lacks it."""
        values = []
        for s0, s1 in self.blocks():
            for i, raw in enumerate(self.file["structures/info"][s0:s1], start=s0):
                info = json.loads(raw)
                if key not in info:
                    raise StoreError(f"{self.path}[{i}]: structure has no info key {key!r} (has: {sorted(info)})")
                values.append(info[key])
        return values

    def fingerprint(self) -> str:
        """SHA-1 of the store's atomic numbers, positions and offsets (identifies its structures), read in blocks."""
        g = self.file["structures"]
        atoms = [(int(self.offsets[s0]), int(self.offsets[s1])) for s0, s1 in self.blocks()]
        return store_fingerprint(self.offsets, (g["z"][a:b] for a, b in atoms), (g["positions"][a:b] for a, b in atoms))

    def structures(self, indices: Iterable[int] | None = None):
        for i in range(len(self)) if indices is None else indices:
            yield self.structure(int(i))

    def copy_structures(self, path: str | Path) -> Path:
        """A new store at ``path`` holding this store's structures and root attributes, no teacher labels (written
        to a ``.partial`` file first, so never half-made)."""
        path = Path(path)
        with replacing(path) as partial, h5py.File(partial, "w") as out:
            out.attrs.update(dict(self.file.attrs))
            self.file.copy(self.file["structures"], out, "structures")
        return path

    def energy_statistics(self, indices: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Per-element reference energies (119,) eV by least squares over structures ``indices`` (None: all; an
        element absent from them gets 0), and their force RMS, eV/Å: what a student's energy head is scaled and
        shifted by. All structures: the values recorded when the store was written; a subset (a training split):
        one pass over the store in blocks (``accumulate_statistics``)."""
        chosen = np.arange(len(self)) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        recorded = self.file.attrs.get("energy_statistics")
        if recorded is not None and np.array_equal(chosen, np.arange(len(self))):
            recorded = json.loads(recorded)
            return np.asarray(recorded["references"], dtype=np.float64), float(recorded["force_rms"])
        statistics = EnergyStatistics()
        self.accumulate_statistics(statistics, chosen)
        return statistics.result()

    def accumulate_statistics(self, statistics: EnergyStatistics, indices: np.ndarray) -> None:
        """Add structures ``indices`` (sorted) to ``statistics``, reading z, energies and forces block by block."""
        g = self._structure_reader()
        bar = progress(desc=f"statistics of {self.path.name}", unit="structure", total=len(self))
        for s0, s1 in self.blocks():
            picked = indices[np.searchsorted(indices, s0) : np.searchsorted(indices, s1)]
            bar.update(s1 - s0)
            if not len(picked):
                continue
            a0, a1 = int(self.offsets[s0]), int(self.offsets[s1])
            n_atoms = self.offsets[picked + 1] - self.offsets[picked]
            starts = np.repeat(self.offsets[picked] - a0 - np.concatenate([[0], np.cumsum(n_atoms)[:-1]]), n_atoms)
            atoms = starts + np.arange(int(n_atoms.sum()))  # rows of the picked structures' atoms in the block
            statistics.add(g["z"][a0:a1][atoms], n_atoms, g["energy"][s0:s1][picked - s0], g["forces"][a0:a1][atoms])
        bar.close()

    # ---- teachers -------------------------------------------------------------------------------------
    def teachers(self) -> list[str]:
        names = self.file["teachers"].keys() if "teachers" in self.file else []
        return [n for n in names if not n.startswith(".")]

    def teacher_group(self, teacher: str) -> h5py.Group:
        """The teacher's group, its index arrays checked against the store on first use (``check_teacher``)."""
        if teacher not in self.teachers():
            raise StoreError(f"{self.path} has no labels from teacher {teacher!r} (has: {self.teachers()}); "
                             f"run precompute")
        g = self.file["teachers"][teacher]
        if teacher not in self._checked:
            check_teacher(self.path, g, self.offsets)
            # unsealed and complete: a reader says so (a writer seals it when its teacher step ends)
            store_digests.verify(self.path, g, complete=self.mode == "r" and bool(g["done"][:].all()))
            self._checked.add(teacher)
        return g

    def seal_teacher(self, teacher: str) -> None:
        """Write the content digest of ``teacher``'s group (``store_digests``; reads the group once): at the end of
        a teacher step, once every structure it was to label is done. A no-op if already sealed."""
        with self.writing():
            g = self.teacher_group(teacher)
            if not store_digests.is_sealed(g):
                store_digests.seal(g)

    def verify(self) -> dict[str, int | None]:
        """Check every block of the store's datasets against their content digests (reads the whole store):
        StoreError naming the first dataset that differs. Returns the blocks checked per group ("structures" and
        each teacher; None: no digest, or a teacher not yet sealed)."""
        checked = {"structures": store_digests.verify(self.path, self.file["structures"], sample=False)}
        for name in self.teachers():
            g = self.teacher_group(name)
            checked[name] = store_digests.verify(self.path, g, sample=False)
        return checked

    def _rebuild(self, what: str, added_bytes: int, change: Callable[[h5py.File], None]) -> None:
        """Copy this store with ``change`` applied (a callable adding to the open copy) into a side file and rename it
        over the store (``store_files.replacing``): a failure at any point (full disk, file-size limit, a crash
        inside HDF5) leaves the store as it was. Costs one copy of the store, whose size plus ``added_bytes`` is
        checked first against the free disk, quota and file-size limit (StoreError naming ``what`` otherwise). The
        store's lock is held throughout (``writing``), and the copy made of its current file, so a concurrent
        writer's teacher is neither lost nor written into a replaced file."""
        if self.mode == "r":
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' for {what}")
        with self.writing():
            src, needed = self.file, self.path.stat().st_size + added_bytes + METADATA_BYTES
            require_space(self.path, needed, what)
            with replacing(self.path) as partial:
                try:
                    with h5py.File(partial, "w") as out:
                        out.attrs.update(dict(src.attrs))
                        for name, obj in src.items():
                            if name != "teachers":
                                src.copy(obj, out, name)
                        teachers = out.create_group("teachers")
                        for name in self.teachers():  # hidden groups (a killed run's, older versions') stay behind
                            src.copy(src["teachers"][name], teachers, name)
                        change(out)
                except (OSError, RuntimeError) as exc:  # h5py's write errors
                    raise StoreError(f"{self.path}: {what} failed while writing {partial.name}, which is removed; "
                                     f"the store is unchanged ({' '.join(str(exc).split())})") from exc
                self.close()  # the renamed copy replaces the file under this handle; it is reopened on next use

    def create_teacher(self, teacher: str, attrs: dict, layout: str = "full", dtype: str = "float32",
                       rows_per_structure: int | None = None) -> h5py.Group:
        """Allocate (or reopen, for resuming) a teacher group sized for every structure.

        layout "full": (3N, 3N) blocks; "upper": symmetric packing of the upper triangle, 3N(3N+1)/2 values;
        "rows": ``rows_per_structure`` rows (k, 3N) per structure, their indices in ``hessian_row_index`` (M, k).
        dtype "float32" or "float16" (half the disk; relative error ≤ 2⁻¹¹ of each entry).
        A new group is added by ``_rebuild``: never inside the live file, so a failed allocation harms nothing. Its
        content digest is allocated with it and written by ``seal_teacher`` once its structures are done.
        """
        with self.writing():  # decided on the current file: another writer may have added this teacher meanwhile
            if teacher in self.teachers():
                g = self.teacher_group(teacher)
                asked = (layout, dtype, rows_per_structure if layout == "rows" else None)
                have = (g.attrs["hessian_layout"], g.attrs["hessian_dtype"], g.attrs.get("rows_per_structure"))
                if asked[:2] != have[:2] or (layout == "rows" and asked[2] != have[2]):
                    raise StoreError(f"{self.path}: teacher {teacher!r} exists with Hessian storage {have}, asked "
                                     f"{asked}")
                return g
            if layout not in LAYOUTS:
                raise ValueError(f"unknown Hessian layout {layout!r}; choose one of {LAYOUTS}")
            if dtype not in ("float32", "float16"):
                raise ValueError(f"Hessian dtype must be float32 or float16, got {dtype!r}")
            n = 3 * self.n_atoms()
            if layout == "rows":
                if not rows_per_structure or rows_per_structure < 1:
                    raise ValueError("layout 'rows' needs rows_per_structure >= 1")
                if int(n.min()) < rows_per_structure:
                    raise ValueError(f"{self.path}: a structure has only {int(n.min())} "
                                     f"Hessian rows < {rows_per_structure}")
            hoff = np.concatenate([[0], np.cumsum(hessian_sizes(self.n_atoms(), layout, rows_per_structure))])
            m, a = len(self), int(self.offsets[-1])
            datasets = {"energy": ((m,), np.float64), "forces": ((a, 3), np.float64),
                        "hessian": ((int(hoff[-1]),), dtype), "asymmetry": ((m,), np.float32), "done": ((m,), bool)}
            if layout == "rows":
                datasets["hessian_row_index"] = ((m, rows_per_structure), np.int32)

            def add(out: h5py.File) -> None:
                g = out["teachers"].create_group(teacher)
                g.attrs.update({k: v for k, v in attrs.items() if v is not None},
                               created=time.strftime("%Y-%m-%dT%H:%M:%S"), hessian_layout=layout, hessian_dtype=dtype)
                if layout == "rows":
                    g.attrs["rows_per_structure"] = int(rows_per_structure)
                for name, (shape, kind) in datasets.items():
                    preallocated(g, name, shape, kind)
                g["hessian_offsets"] = hoff
                store_digests.allocate(g)

            self._rebuild(f"adding teacher {teacher!r}", _nbytes(datasets) + hoff.nbytes, add)
        return self.teacher_group(teacher)

    def write_teacher(self, teacher: str, i: int, energy: float, forces: np.ndarray, hessian: np.ndarray,
                      rows: np.ndarray | None = None, asymmetry: float | None = None,
                      node_features: np.ndarray | None = None) -> None:
        """Write one structure's teacher labels, flush, then set its completion mark and flush again (under the
        store's lock: ``_labels_of``). NaN/inf labels are refused, never marked done. The write that completes the
        group also writes its content digest (``store_digests.seal``).

        hessian: (3N, 3N) eV/Å² for layouts full/upper; for layout "rows" the (k, 3N) rows numbered ``rows`` (k,).
        asymmetry: max |H − Hᵀ| to record (eV/Å²) when ``hessian`` was symmetrised by the teacher;
        default: of ``hessian``.
        node_features: (N, F) teacher node features, for a group made with ``create_features``.
        """
        with self._labels_of(teacher, f"{self.path}[{i}]") as g:
            fresh = not g["done"][i]
            self._write_labels(g, teacher, i, energy, forces, hessian, rows, asymmetry, node_features)
            if fresh:  # count the structures left: the write that completes the group seals it
                left = self._left.get(teacher)
                self._left[teacher] = left = int((~g["done"][:]).sum()) if left is None else left - 1
                if left == 0:
                    store_digests.seal(g)

    def _write_labels(self, g: h5py.Group, teacher: str, i: int, energy: float, forces: np.ndarray,
                      hessian: np.ndarray, rows: np.ndarray | None, asymmetry: float | None,
                      node_features: np.ndarray | None) -> None:
        layout = g.attrs["hessian_layout"]
        n = self.n_atoms(i)
        expected = (g.attrs["rows_per_structure"], 3 * n) if layout == "rows" else (3 * n, 3 * n)
        if forces.shape != (n, 3) or hessian.shape != expected:
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} gave forces {forces.shape} and Hessian "
                             f"{hessian.shape}; expected ({n}, 3) and {expected}")
        if not (np.isfinite(hessian).all() and np.isfinite(forces).all() and np.isfinite(energy)):
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} returned NaN/inf labels")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        h0, h1 = g["hessian_offsets"][i : i + 2]
        g["energy"][i] = energy
        g["forces"][a:b] = forces
        if layout == "rows":
            g["hessian_row_index"][i] = np.asarray(rows)
            packed = hessian
            g["asymmetry"][i] = np.nan  # unknown from a subset of rows
        else:
            packed = hessian[_triangle(3 * n)[0]] if layout == "upper" else hessian
            g["asymmetry"][i] = float(np.abs(hessian - hessian.T).max()) if asymmetry is None else asymmetry
        with np.errstate(over="ignore"):  # an overflow is refused just below, by name
            stored = packed.astype(g["hessian"].dtype)
        if not np.isfinite(stored).all():  # float16 overflows above 65504 eV/Å² into inf
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} Hessian entries up to {np.abs(hessian).max():.4g} "
                             f"eV/Å² do not fit the store's {stored.dtype} (max {np.finfo(stored.dtype).max:.4g}); "
                             f"store this teacher with storage.dtype=float32")
        g["hessian"][h0:h1] = stored.reshape(-1)
        if node_features is not None:
            g["node_features"][a:b] = node_features
        self.file.flush()
        g["done"][i] = True
        self.file.flush()

    @contextmanager
    def _labels_of(self, teacher: str, where: str) -> Iterator[h5py.Group]:
        """``teacher``'s group in the current file, under the store's lock (``writing``), its content digest
        unsealed before anything is written; an OSError of a write (a disk that filled after the space checks, an
        I/O error) becomes one StoreError line naming ``where``: with HDF5's sieve buffer off for writers
        (``store_files.open_h5``) it fails in the write itself, and the labels written before stay."""
        with self.writing():
            g = self.teacher_group(teacher)
            try:
                store_digests.unseal(g)
                yield g
            except OSError as exc:
                code = h5_errno(exc)
                reason = os.strerror(code) if code else " ".join(str(exc).split())
                hint = "free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "check the disk"
                raise StoreError(f"{where}: writing the labels of teacher {teacher!r} failed ({reason}); the "
                                 f"structures labelled before are kept: {hint}, then rerun to resume") from None

    def create_features(self, teacher: str, n_features: int, element_z: np.ndarray | None = None,
                        element_embeddings: np.ndarray | None = None) -> None:
        """Add the teacher's node features (A, F) float32 (filled per structure by ``write_teacher``) and, if
        given, its element embeddings (E, F_e) with their atomic numbers (E,), for the n2n and a2a baselines."""
        with self.writing():
            g = self.teacher_group(teacher)
            if "node_features" in g:
                return
            if g["done"][:].any():
                raise StoreError(f"{self.path}: teacher {teacher!r} already has structures labelled without node "
                                 f"features; export features into a new teacher group (e.g. another teacher name)")
            shape = (int(self.offsets[-1]), n_features)
            embeddings = None if element_embeddings is None else np.asarray(element_embeddings, dtype=np.float32)

            def add(out: h5py.File) -> None:
                t = out["teachers"][teacher]
                preallocated(t, "node_features", shape, np.float32)
                if embeddings is not None:
                    t["element_z"] = np.asarray(element_z, dtype=np.int16)
                    t["element_embeddings"] = embeddings
                store_digests.allocate(t)  # now over the new datasets too

            added = _nbytes({"node_features": (shape, np.float32)}) + (0 if embeddings is None else embeddings.nbytes)
            self._rebuild(f"adding node features to teacher {teacher!r}", added, add)

    def node_features(self, teacher: str, i: int) -> np.ndarray:
        """Teacher node features of structure i, (N, F)."""
        g = self.teacher_group(teacher)
        if "node_features" not in g:
            raise StoreError(f"{self.path}: teacher {teacher!r} has no node features; precompute with features=true")
        return g["node_features"][int(self.offsets[i]) : int(self.offsets[i + 1])]

    def node_feature_width(self, teacher: str) -> int:
        """F of the teacher's stored node features (A, F); StoreError if it has none."""
        g = self.teacher_group(teacher)
        if "node_features" not in g:
            raise StoreError(f"{self.path}: teacher {teacher!r} has no node features; precompute with features=true")
        return int(g["node_features"].shape[1])

    def element_embeddings(self, teacher: str) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers (E,) and the teacher's element embeddings (E, F_e); StoreError if it has none."""
        g = self.teacher_group(teacher)
        if "element_embeddings" not in g:
            raise StoreError(f"{self.path}: teacher {teacher!r} has no element embeddings (precompute with "
                             f"features=true and a teacher that has an embedding table, e.g. MACE)")
        return g["element_z"][:].astype(np.int64), g["element_embeddings"][:]

    def teacher_done(self, teacher: str) -> np.ndarray:
        """(M,) completion marks of ``teacher`` (all False when the store has no such teacher)."""
        return self.teacher_group(teacher)["done"][:] if teacher in self.teachers() else np.zeros(len(self), bool)

    def is_complete(self, teacher: str) -> bool:
        """Whether every structure has ``teacher``'s labels."""
        return bool(self.teacher_done(teacher).all())

    def require_complete(self, teacher: str, command: str | None = None) -> None:
        """StoreError naming the file, the teacher, how far it got and (``command``) how to finish, unless complete."""
        done = self.teacher_done(teacher)
        if not done.all():
            hint = f"; run `{command}`" if command else "; finish precompute first"
            raise StoreError(f"{self.path}: teacher {teacher!r} has labels for {int(done.sum())}/{len(done)} "
                             f"structures{hint}")

    def copy_teacher_labels(self, source: HessianStore, teacher: str, indices: np.ndarray) -> None:
        """Copy ``teacher``'s labels of structures ``indices`` from ``source`` (a store of the same structures, e.g.
        a finished shard) verbatim: the group is created like the source's if missing, data first and completion
        marks last, so a killed copy can be rerun. Non-finite labels are refused, naming the source structure. The
        copy that completes the group writes its content digest."""
        src = source.teacher_group(teacher)
        attrs = dict(src.attrs)
        self.create_teacher(teacher, attrs, layout=attrs["hessian_layout"], dtype=attrs["hessian_dtype"],
                            rows_per_structure=attrs.get("rows_per_structure"))
        if "node_features" in src:
            has_embeddings = "element_embeddings" in src
            self.create_features(teacher, src["node_features"].shape[1],
                                 src["element_z"][:] if has_embeddings else None,
                                 src["element_embeddings"][:] if has_embeddings else None)
        with self._labels_of(teacher, f"{self.path}") as dst:  # after create_features, which replaces the file
            for j in indices:
                a, b = int(self.offsets[j]), int(self.offsets[j + 1])
                h0, h1 = (int(x) for x in src["hessian_offsets"][j : j + 2])
                energy, forces, hessian = src["energy"][j], src["forces"][a:b], src["hessian"][h0:h1]
                if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(hessian).all()):
                    raise StoreError(f"{source.path}[{j}]: teacher {teacher!r} has non-finite labels although marked "
                                     f"done; relabel it")
                dst["energy"][j], dst["asymmetry"][j] = energy, src["asymmetry"][j]
                dst["forces"][a:b], dst["hessian"][h0:h1] = forces, hessian
                if "hessian_row_index" in src:
                    dst["hessian_row_index"][j] = src["hessian_row_index"][j]
                if "node_features" in src:
                    dst["node_features"][a:b] = src["node_features"][a:b]
            self.file.flush()
            dst["done"][np.asarray(indices)] = True
            self.file.flush()
            self._left.pop(teacher, None)  # counted by write_teacher before these marks
            if dst["done"][:].all():
                store_digests.seal(dst)

    def _reader(self, teacher: str) -> dict:
        """Open handles and small arrays of a teacher group, kept for this process's file: a training item reads
        a structure's labels and rows with a few h5py calls instead of re-resolving every path."""
        key = f"teachers/{teacher}"
        self.file  # noqa: B018 (reopens the file, and empties this cache, in a forked worker)
        if key not in self._readers:
            g = self.teacher_group(teacher)
            layout = g.attrs["hessian_layout"]
            self._readers[key] = {
                "layout": layout, "hessian": g["hessian"], "hessian_offsets": g["hessian_offsets"][:],
                "energy": g["energy"], "forces": g["forces"], "done": g["done"],
                "row_index": g["hessian_row_index"] if layout == "rows" else None}
        return self._readers[key]

    def teacher_labels(self, teacher: str, i: int) -> tuple[float, np.ndarray]:
        """Teacher energy (eV) and forces (N, 3) eV/Å of structure i; StoreError if either is not finite."""
        r = self._reader(teacher)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        energy, forces = float(r["energy"][i]), r["forces"][a:b]
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} has a non-finite energy or forces although marked "
                             f"done; relabel this teacher")
        return energy, forces

    def stored_rows(self, teacher: str, i: int) -> np.ndarray:
        """Row indices of structure i's teacher Hessian held in the store (all 3N unless layout "rows")."""
        r = self._reader(teacher)
        if r["layout"] == "rows":
            return r["row_index"][i].astype(np.int64)
        return np.arange(3 * self.n_atoms(i))

    def hessian(self, teacher: str, i: int) -> np.ndarray:
        """Full teacher Hessian of structure i, (3N, 3N) eV/Å² (not available in layout "rows")."""
        return self.hessian_rows(teacher, i, np.arange(3 * self.n_atoms(i)))

    def hessian_rows(self, teacher: str, i: int, rows: np.ndarray) -> np.ndarray:
        """Rows of structure i's teacher Hessian, (len(rows), 3N) float32 eV/Å².

        One read of the structure's block when it is small (≤ ``BLOCK_READ`` values), else one read per row, so
        a few rows of a large structure do not read its whole Hessian."""
        r = self._reader(teacher)
        if not r["done"][i]:
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} Hessian not computed yet; run precompute")
        width = 3 * int(self.offsets[i + 1] - self.offsets[i])
        h0, h1 = (int(x) for x in r["hessian_offsets"][i : i + 2])
        data, layout, rows = r["hessian"], r["layout"], np.asarray(rows, dtype=np.int64)
        if layout == "full":
            if h1 - h0 <= BLOCK_READ:
                out = data[h0:h1].reshape(width, width)[rows]
            else:
                out = np.stack([data[h0 + row * width : h0 + (row + 1) * width] for row in rows.tolist()])
        elif layout == "upper":
            upper, lower = _triangle(width)
            full = np.empty((width, width), np.float32)
            full[upper] = full[lower] = data[h0:h1]
            out = full[rows]
        else:
            stored = r["row_index"][i]
            where = {int(row): k for k, row in enumerate(stored)}
            missing = [int(row) for row in rows if int(row) not in where]
            if missing:
                raise StoreError(f"{self.path}[{i}]: teacher {teacher} stores rows {sorted(stored.tolist())} only "
                                 f"(layout 'rows'); asked for {missing}")
            block = data[h0:h1].reshape(len(stored), width)
            out = block[[where[int(row)] for row in rows]]
        if not np.isfinite(out).all():
            raise StoreError(f"{self.path}[{i}]: teacher {teacher} has non-finite Hessian entries in rows "
                             f"{rows.tolist()} although they are marked done; relabel this teacher")
        return out.astype(np.float32)
