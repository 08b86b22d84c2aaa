"""Building a store of teacher-labelled structures added to training (``data.added``), resumably.

Three steps, each safe to kill and rerun:

1. Candidates per parent (a training structure of the subset store): configurations made from it, with the teacher's
   energies and forces and an optional selection score, saved as one ``<store>.parts/<parent>.npz`` each (written
   to a temporary name, then renamed), so a rerun makes only the parents still missing. Each parent's draws are
   seeded by (seed, parent): the same whatever was done before.
2. Selection (all candidates, or e.g. the highest-scoring ones) and the store, written once (``write_structures``)
   with the teacher's energies and forces as its reference labels.
3. The teacher's Hessians (``teacher_step.precompute_teacher``: completion marks, resumable), stored like the subset
   store's; then the parts are removed.

The store records how it was made (root attributes); a store or parts folder made otherwise is refused, naming the
difference, never silently reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch_geometric.data import Batch
from tqdm import tqdm

from hessdistill.data.keys import ORIGINS
from hessdistill.data.sources.npz import numeric
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import Structure
from hessdistill.devices import module_device
from hessdistill.teacher_step.run import precompute_teacher
from hessdistill.teachers.base import Teacher

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    """Configurations made from one parent: positions (C, N, 3) Å, the teacher's energy (C,) eV and forces
    (C, N, 3) eV/Å, a selection score (C,) (higher: wanted more; NaN where unused), the origin flag of each (C,)
    and the teacher force calls they cost (MD steps and labelling)."""

    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    score: np.ndarray
    origin: np.ndarray
    teacher_calls: int

    def save(self, path: Path) -> None:
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
        np.savez(partial, positions=self.positions, energy=self.energy, forces=self.forces, score=self.score,
                 origin=self.origin, teacher_calls=self.teacher_calls)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> Candidates:
        with np.load(path, allow_pickle=False) as f:  # a run folder's file is data: numbers only, named on error
            positions, energy, forces, score = (numeric(path, f, key) for key in ("positions", "energy", "forces",
                                                                                  "score"))
            return cls(positions, energy, forces, score, numeric(path, f, "origin", np.int64),
                       int(numeric(path, f, "teacher_calls", np.int64)))


def labels_at(model, parent: Structure, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model's (teacher's or student's: ``energy_forces``) energies (C,) eV and forces (C, N, 3) eV/Å at
    configurations (C, N, 3) of ``parent``'s atoms, in one batch on the model's device."""
    if len(positions) == 0:
        return np.zeros(0), np.zeros((0, parent.n_atoms, 3))
    dtype = next(model.parameters()).dtype
    batch = Batch.from_data_list([Structure(parent.z, p, parent.cell, parent.pbc).to_data(dtype)
                                  for p in positions]).to(module_device(model))
    energy, forces = model.energy_forces(batch)
    return energy.cpu().double().numpy(), forces.cpu().double().numpy().reshape(len(positions), -1, 3)


def parent_hessian(main: HessianStore, teacher: Teacher, i: int) -> np.ndarray:
    """The teacher's (3N, 3N) Hessian (eV/Å²) at structure i of ``main``: the store's when it holds the full matrix,
    else computed."""
    name = teacher.name
    if name in main.teachers() and main.teacher_group(name).attrs["hessian_layout"] != "rows" \
            and main.teacher_done(name)[i]:
        return main.hessian(name, i).astype(np.float64)
    batch = Batch.from_data_list([main.structure(i).to_data(teacher.dtype)])
    return teacher.hessians(batch).hessians[0].cpu().double().numpy()


def storage_of(main: HessianStore, teacher: str) -> dict:
    """Hessian storage (layout, dtype, rows) of ``teacher`` in ``main``, for an added store to match; full float32
    when ``main`` has no such teacher."""
    if teacher not in main.teachers():
        return {"layout": "full", "dtype": "float32", "rows_per_structure": None}
    attrs = main.teacher_group(teacher).attrs
    rows = attrs.get("rows_per_structure")
    return {"layout": str(attrs["hessian_layout"]), "dtype": str(attrs["hessian_dtype"]),
            "rows_per_structure": None if rows is None else int(rows)}


def _check_made(path: Path, have: dict, want: dict, parts: Path) -> None:
    differ = sorted(k for k in want if str(have.get(k)) != str(want[k]))
    if differ:
        k = differ[0]
        raise StoreError(f"{path} was made with {k}={have.get(k)}, the run now asks for {k}={want[k]}; delete it "
                         f"(and {parts.name} if present) to make it again, or give the new one another store path")


def build_added_store(path: str | Path, main: HessianStore, parents: np.ndarray,
                      generate: Callable[[int], Candidates], teacher: Callable[[], Teacher], attrs: dict,
                      select: Callable[[dict[int, Candidates]], list[tuple[int, int]]] | None = None,
                      batch_size: int = 8, progress: bool = True) -> Path:
    """The added store at ``path`` of configurations made by ``generate(parent)`` from each of ``parents`` (indices
    into ``main``), chosen by ``select`` (candidates by parent → (parent, configuration) pairs; None: all), labelled
    by the teacher ``teacher()`` (built only when work remains). attrs: root attributes saying how it is made
    (``data.added.added_attrs``), checked against an existing store or parts folder."""
    path, parents = Path(path), np.asarray(parents, dtype=np.int64)
    parts = path.with_name(path.name + ".parts")
    attrs = {k: str(v) for k, v in attrs.items()}
    if not path.exists():
        parts.mkdir(parents=True, exist_ok=True)
        record = parts / "made.json"
        if record.exists():
            _check_made(parts, json.loads(record.read_text()), attrs, parts)
        else:
            record.write_text(json.dumps(attrs, indent=1))
        candidates = {}
        for p in tqdm(parents.tolist(), desc=f"candidates for {path.name}", unit="structure", disable=not progress):
            part = parts / f"{p}.npz"
            if not part.exists():
                generate(p).save(part)
            candidates[p] = Candidates.load(part)
        chosen = select(candidates) if select is not None else \
            [(p, c) for p in parents.tolist() for c in range(len(candidates[p].energy))]
        structures = []
        for p, c in chosen:
            parent, made = main.structure(p), candidates[p]
            info = {k: v for k, v in parent.info.items() if k != "source"}
            origin, score = int(made.origin[c]), float(made.score[c])
            info = {**info, "origin": origin, "parent": p, "candidate": c, **({"score": score} if score == score
                                                                              else {})}
            structures.append(Structure(parent.z, made.positions[c], parent.cell, parent.pbc, float(made.energy[c]),
                                        made.forces[c], info, source=f"{main.path}[{p}] {ORIGINS[origin]} {c}"))
        path.parent.mkdir(parents=True, exist_ok=True)
        calls = sum(candidates[p].teacher_calls for p in parents.tolist())
        write_structures(path, structures, attrs={**attrs, "candidates": sum(len(c.energy) for c in
                                                                             candidates.values()),
                                                  "teacher_force_calls": calls})
    with HessianStore(path) as store:  # read-only: runs of a sweep that share a finished store train side by side
        _check_made(path, store.attributes, attrs, parts)
        name = store.attributes["teacher"]
        labelled = store.is_complete(name)
    if not labelled:
        with HessianStore(path, mode="a") as store:
            storage = storage_of(main, name)
            precompute_teacher(store, teacher(), batch_size=batch_size, progress=progress, layout=storage["layout"],
                               dtype=storage["dtype"], rows_per_structure=storage["rows_per_structure"])
    shutil.rmtree(parts, ignore_errors=True)
    return path
