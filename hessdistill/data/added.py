"""Stores added to a run's training split: teacher-labelled structures (augmentation, on-policy rounds), each set in
its own store file beside the subset's store, and never in validation or test.

An added store is an ordinary store (``data.store``) whose reference labels are the teacher's, with root attributes
``added_to`` (the fingerprint of the subset store it extends) and ``teacher`` (whose labels these are), and per
structure, in ``info``: ``origin`` (``data.keys.ORIGINS``) and ``parent``, the index of the subset structure it was
made from. ``added_provenance`` checks one against a run — made for this subset store, every parent in the run's
training split (so nothing derived from a validation or test structure trains) — and returns what the datamodule
puts on its items: origin, energy weight and energy shift.

Teacher and reference energies differ by a nearly constant amount per molecule (a basis or convention difference:
+80…250 meV for ANI-2x against ωB97X/6-31G(d) on scl_organics). ``teacher_energy`` says how the energies of
teacher-labelled structures enter the loss:

- ``forces_only`` (the default): energy weight 0; they train forces (and Hessian rows) only, and energies are
  learnt from the reference structures alone. Assumes nothing about the offset.
- ``molecule_offset``: target E_teacher + o_m, o_m the mean of E_ref − E_teacher over the training split's
  structures of the parent's molecule (info key ``molecule``).
- ``element_offset``: target E_teacher + Σ_Z n_Z c_Z, c fitted by least squares to E_ref − E_teacher over the
  training split (one constant per element: for sets where molecules share a composition-linear offset).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from hessdistill.data.keys import ORIGINS, REFERENCE
from hessdistill.data.store import HessianStore, StoreError

TEACHER_ENERGY = ("forces_only", "molecule_offset", "element_offset")


@dataclass
class Provenance:
    """Per structure of one store: origin flag (M,) int64, energy weight (M,) and energy shift (M,) eV added to
    its reference energy."""

    origin: np.ndarray
    energy_weight: np.ndarray
    energy_shift: np.ndarray

    @classmethod
    def reference(cls, m: int) -> Provenance:
        """The subset store's own structures: origin 0, weight 1, no shift."""
        return cls(np.zeros(m, np.int64), np.ones(m), np.zeros(m))

    def label(self, data, i: int) -> None:
        """Add ``origin`` (1,) and ``energy_weight`` (1,) to structure i's item and shift its energy."""
        data.origin = torch.tensor([int(self.origin[i])])
        data.energy_weight = torch.tensor([float(self.energy_weight[i])], dtype=data.pos.dtype)
        if self.energy_shift[i] != 0.0:
            data.energy = data.energy + float(self.energy_shift[i])


def added_attrs(fingerprint: str, teacher: str, parents: np.ndarray, **made: object) -> dict:
    """Root attributes of a store added to the subset store of ``fingerprint``: the fingerprint, the teacher, the
    SHA-1 of the parents (int64) it was made from, and how it was made (JSON values)."""
    digest = hashlib.sha1(np.ascontiguousarray(parents, dtype=np.int64).tobytes()).hexdigest()
    return {"added_to": fingerprint, "teacher": teacher, "parents_sha1": digest,
            **{k: json.dumps(v, sort_keys=True, default=str) for k, v in made.items()}}


def added_structures(store: HessianStore) -> tuple[np.ndarray, np.ndarray]:
    """origin (M,) and parent (M,) int64 of an added store's structures (StoreError naming the store if it is not
    one)."""
    if "added_to" not in store.attributes:
        raise StoreError(f"{store.path} is not a store of added structures (no 'added_to' attribute); make it with "
                         f"augment= or hessdistill-onpolicy")
    origin = np.asarray(store.info_values("origin"), dtype=np.int64)
    parent = np.asarray(store.info_values("parent"), dtype=np.int64)
    bad = (origin <= REFERENCE) | (origin >= len(ORIGINS))
    if bad.any():
        raise StoreError(f"{store.path}[{int(np.flatnonzero(bad)[0])}]: origin {int(origin[bad][0])} is not one of "
                         f"{list(range(1, len(ORIGINS)))} ({', '.join(ORIGINS[1:])})")
    return origin, parent


def added_provenance(added: HessianStore, main: HessianStore, fingerprint: str, train: np.ndarray,
                     teacher_energy: str) -> Provenance:
    """Check ``added`` against the run (made for the store of ``fingerprint``, parents in ``train``) and return its
    structures' provenance under ``teacher_energy`` (``TEACHER_ENERGY``)."""
    if teacher_energy not in TEACHER_ENERGY:
        raise ValueError(f"unknown teacher_energy {teacher_energy!r}; choose one of {TEACHER_ENERGY}")
    origin, parent = added_structures(added)
    if added.attributes["added_to"] != fingerprint:
        raise StoreError(f"{added.path} was made for another store than {main.path} (fingerprint differs); delete it "
                         f"to make it again")
    outside = ~np.isin(parent, train)
    if outside.any():
        raise StoreError(f"{added.path}: {int(outside.sum())} of its {len(parent)} structures descend from structures "
                         f"outside this run's training split (e.g. structure {int(parent[outside][0])}), which would "
                         f"leak validation/test data into training; it was made for another split: delete it to make "
                         f"it again")
    m = len(added)
    if teacher_energy == "forces_only":
        return Provenance(origin, np.zeros(m), np.zeros(m))
    teacher = str(added.attributes["teacher"])
    main.require_complete(teacher, f"hessdistill-precompute teacher={teacher}")  # the fit needs teacher energies
    train = np.asarray(train)
    reference = np.array([main.structure(int(i)).energy for i in train])
    predicted = np.array([main.teacher_labels(teacher, int(i))[0] for i in train])
    if teacher_energy == "molecule_offset":
        groups = np.asarray([str(g) for g in main.info_values("molecule")])
        offsets = fit_molecule_offsets(groups[train], reference, predicted)
        shift = np.array([offsets[groups[p]] for p in parent])
    else:
        coef = fit_element_offsets(element_counts(main, train), reference, predicted)
        shift = element_counts(added, np.arange(m)) @ coef
    return Provenance(origin, np.ones(m), shift)


def fit_molecule_offsets(groups: np.ndarray, reference: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Mean of reference − teacher energy (eV) per group (molecule): groups, reference, teacher (n,)."""
    difference = np.asarray(reference, np.float64) - np.asarray(teacher, np.float64)
    return {str(g): float(difference[groups == g].mean()) for g in np.unique(groups)}


def fit_element_offsets(counts: np.ndarray, reference: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Per-element offsets c (119,) eV, least squares of counts (n, 119) @ c ≈ reference − teacher (n,); elements
    absent from ``counts`` get 0."""
    present = counts.any(axis=0)
    coef = np.zeros(counts.shape[1])
    coef[present], *_ = np.linalg.lstsq(counts[:, present].astype(np.float64),
                                        np.asarray(reference, np.float64) - np.asarray(teacher, np.float64),
                                        rcond=None)
    return coef


def element_counts(store: HessianStore, indices: np.ndarray) -> np.ndarray:
    """(len(indices), 119) atoms of each element in structures ``indices``."""
    counts = np.zeros((len(indices), 119))
    for row, i in enumerate(indices):
        np.add.at(counts[row], store.structure(int(i)).z, 1)
    return counts
