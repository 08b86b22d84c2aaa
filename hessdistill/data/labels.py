"""Where a batch's teacher labels come from, chosen once per run: the store's precomputed labels (``StoredLabels``)
or a frozen teacher computing them during training (``OnlineLabels``).

A label source works in two places: ``label_item`` adds fields to one structure's item as the dataset reads it (in a
DataLoader worker), and ``label_batch`` to a collated batch once it is on the training device. Either way a batch
leaves the datamodule with the schema's teacher fields (``hessdistill.data.keys``): teacher_energy (B,) eV,
teacher_forces (Ntot, 3) eV/Å and, when rows are sampled, sampled_rows (B, s) and teacher_rows (s, Ntot, 3) eV/Å²;
with probes (Hessian-vector-product KD, stored labels only), probe_vectors (k, Ntot, 3) and teacher_hvp (k, Ntot, 3)
eV/Å².

``reference=teacher`` (distillation without DFT): a source built ``as_reference`` puts the teacher's energy and
forces into the reference fields energy (B,) eV and forces (Ntot, 3) eV/Å instead, so the same energy and force terms
and metrics compare against the teacher, and the student's energy head is scaled by the teacher's energies
(``reference_statistics``); the structures need no reference labels of their own (``check_reference``).
"""

from __future__ import annotations

import abc

import numpy as np
import torch
from torch_geometric.data import Batch

from hessdistill.data.keys import (
    ENERGY,
    FORCES,
    PROBE_VECTORS,
    SAMPLED_ROWS,
    TEACHER_ENERGY,
    TEACHER_FORCES,
    TEACHER_HVP,
    TEACHER_NODE_FEATURES,
    TEACHER_ROWS,
    StructureData,
)
from hessdistill.data.statistics import EnergyStatistics
from hessdistill.data.store import HessianStore
from hessdistill.hessian.probes import hessian_vector_products
from hessdistill.hessian.row_sampling import UNIFORM, UniformRows
from hessdistill.hessian.rows import RowStrategy

REFERENCES = ("dft", "teacher")  # what the energy and force terms and metrics compare against
STATISTICS_BATCH = 32  # structures per teacher call when an online teacher labels the training split's statistics


def labels_required(reference: str) -> bool:
    """Whether the structures must carry their own reference energy and forces (reference=dft); ValueError (one line)
    unless ``reference`` is one of ``REFERENCES``."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    return reference == "dft"


def check_reference(reference: str, store: HessianStore) -> None:
    """ValueError (one line) unless ``reference`` is one of ``REFERENCES`` and, for dft, every structure of ``store``
    has its reference energy and forces (a store read without labels is for reference=teacher)."""
    unlabelled = int(store.attributes.get("unlabelled_structures", 0))
    if labels_required(reference) and unlabelled:
        raise ValueError(f"{store.path}: {unlabelled} of its {len(store)} structures have no reference energy or "
                         f"forces; train with reference=teacher (the teacher labels them), or build the store from "
                         f"labelled data")


def reference_fields(as_reference: bool) -> tuple[str, str]:
    """The batch fields that receive the teacher's energy and forces."""
    return (ENERGY, FORCES) if as_reference else (TEACHER_ENERGY, TEACHER_FORCES)


class TeacherLabels(abc.ABC):
    """A source of teacher labels; ``name`` is the teacher's (its store group for stored labels). ``as_reference``:
    the teacher's energy and forces go into the reference fields (``reference=teacher``)."""

    name: str
    provides: frozenset[str]  # the batch fields (data.keys) this source adds
    as_reference: bool = False

    @abc.abstractmethod
    def label_item(self, data: StructureData, store: HessianStore, i: int, rows: int,
                   generator: torch.Generator, sampler: UniformRows = UNIFORM) -> None:
        """Add the teacher fields this source reads per structure to ``data``, structure ``i`` of ``store``,
        drawing ``rows`` Hessian rows (0: none) with ``generator`` (the one seed rule, ``hessian.rows``) by
        ``sampler`` (``hessian.row_sampling``: uniform, or importance-weighted rows with their ``row_weights``)."""

    def label_batch(self, batch):
        """The collated batch on its device, with whatever this source computes per batch added."""
        return batch

    def check_probes(self, store) -> None:
        """Raise ValueError, in one line, unless this source can give ``store``'s structures H v for any probe v
        (Hessian-vector-product KD)."""
        raise ValueError(f"Hessian-vector-product KD (probes) needs the teacher's full Hessians from a store "
                         f"(teacher_mode=precomputed); the {type(self).__name__} of {self.name} computes only rows")

    def label_probes(self, data: StructureData, store: HessianStore, i: int, probes: torch.Tensor) -> None:
        """Add the probe vectors (k, N, 3) of structure ``i`` of ``store`` and the teacher's H v of them to ``data``
        (sources that pass ``check_probes``)."""
        self.check_probes(store)

    @abc.abstractmethod
    def reference_statistics(self, store: HessianStore, indices: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-element reference energies (119,) eV fitted to the teacher's energies of structures ``indices`` of
        ``store``, and the RMS of its forces, eV/Å (``data.statistics``): the student's energy scale under
        reference=teacher."""


class StoredLabels(TeacherLabels):
    """The store's labels of teacher ``name``: energy, forces, s rows sampled from the rows the store holds (all 3N,
    or the k of a row-subset store) and, with ``node_features``, the teacher's node features (n2n baseline)."""

    def __init__(self, name: str, node_features: bool = False, as_reference: bool = False) -> None:
        self.name, self.node_features, self.as_reference = name, node_features, as_reference
        self.provides = frozenset({*reference_fields(as_reference), SAMPLED_ROWS, TEACHER_ROWS, PROBE_VECTORS,
                                   TEACHER_HVP} | ({TEACHER_NODE_FEATURES} if node_features else set()))

    def reference_statistics(self, store, indices):
        statistics = EnergyStatistics()
        for block in np.array_split(np.sort(indices), max(1, -(-len(indices) // 4096))):
            labels = [store.teacher_labels(self.name, int(i)) for i in block]
            statistics.add(np.concatenate([store.structure(int(i)).z for i in block]), store.n_atoms()[block],
                           [e for e, _ in labels], np.concatenate([f for _, f in labels]))
        return statistics.result()

    def label_item(self, data, store, i, rows, generator, sampler=UNIFORM) -> None:
        energy, forces = store.teacher_labels(self.name, i)
        energy_field, forces_field = reference_fields(self.as_reference)
        data[energy_field] = torch.tensor([energy], dtype=data.pos.dtype)
        data[forces_field] = torch.as_tensor(forces, dtype=data.pos.dtype)
        if self.node_features:
            data.teacher_node_features = torch.as_tensor(store.node_features(self.name, i), dtype=data.pos.dtype)
        if rows > 0:
            available = torch.as_tensor(store.stored_rows(self.name, i))

            def norms() -> torch.Tensor:
                return torch.as_tensor(store.hessian_rows(self.name, i, available.numpy())).double().norm(dim=1)

            chosen, weights = sampler.draw(int(data.idx), available, rows, generator, f"{store.path}[{i}]", norms)
            h = store.hessian_rows(self.name, i, chosen.numpy())  # (s, 3N)
            data.sampled_rows = chosen.unsqueeze(0)
            data.teacher_rows = torch.as_tensor(h, dtype=data.pos.dtype).view(rows, -1, 3)
            if weights is not None:
                data.row_weights = weights.to(data.pos.dtype).unsqueeze(0)

    def check_probes(self, store) -> None:
        """Hessian-vector products need every row of every Hessian: refused for a store (or any store of a set) that
        holds k rows per structure (layout "rows")."""
        for part in getattr(store, "stores", [store]):
            if part.teacher_group(self.name).attrs["hessian_layout"] == "rows":
                raise ValueError(f"{part.path}: teacher {self.name} stores k Hessian rows per structure (layout "
                                 f"'rows'); Hessian-vector-product KD needs full Hessians (layout full or upper)")

    def label_probes(self, data, store, i, probes) -> None:
        h = store.hessian(self.name, i)  # (3N, 3N): one read of the structure's block
        data.probe_vectors = probes.to(data.pos.dtype)
        data.teacher_hvp = hessian_vector_products(h, probes).to(data.pos.dtype)


class OnlineLabels(TeacherLabels):
    """A frozen ``Teacher`` labels every batch on the batch's device: items carry only their sampled row indices
    (drawn over all 3N rows), and ``label_batch`` computes energy, forces and those rows (no precompute, no store
    labels). ``strategy``: how the teacher's row VJPs run (``hessian.rows.resolve_strategy``)."""

    def __init__(self, teacher, strategy: RowStrategy = "auto", as_reference: bool = False) -> None:
        self.teacher, self.strategy, self.name = teacher.freeze(), strategy, teacher.name
        self.as_reference = as_reference
        self.provides = frozenset({*reference_fields(as_reference), SAMPLED_ROWS, TEACHER_ROWS})

    def reference_statistics(self, store, indices):
        """One pass of the teacher's energies and forces over structures ``indices`` (``STATISTICS_BATCH`` per
        call)."""
        statistics = EnergyStatistics()
        for block in np.array_split(indices, max(1, -(-len(indices) // STATISTICS_BATCH))):
            structures = [store.structure(int(i)) for i in block]
            batch = Batch.from_data_list([s.to_data(self.teacher.dtype) for s in structures]).to(self.teacher.device)
            energy, forces = self.teacher.energy_forces(batch)
            statistics.add(np.concatenate([s.z for s in structures]), [s.n_atoms for s in structures],
                           energy.detach().cpu().double().numpy(), forces.detach().cpu().double().numpy())
        return statistics.result()

    def label_item(self, data, store, i, rows, generator, sampler=UNIFORM) -> None:
        if rows > 0:
            chosen, weights = sampler.draw(int(data.idx), torch.arange(3 * data.num_nodes), rows, generator,
                                           f"{store.path}[{i}]", self._no_norms)
            data.sampled_rows = chosen.unsqueeze(0)
            if weights is not None:
                data.row_weights = weights.to(data.pos.dtype).unsqueeze(0)

    def _no_norms(self) -> torch.Tensor:
        raise ValueError(f"row_sampling=teacher_norm needs the teacher's stored Hessians; the online teacher "
                         f"{self.name} computes only the drawn rows (use row_sampling=residual or uniform)")

    def label_batch(self, batch):
        if self.teacher.device != batch.pos.device:
            self.teacher.to(batch.pos.device)
        if hasattr(batch, "sampled_rows"):
            out = self.teacher.hessian_rows(batch, batch.sampled_rows, self.strategy)
            batch.teacher_rows = out.rows.to(batch.pos.dtype)
            energy, forces = out.energy, out.forces
        else:
            energy, forces = self.teacher.energy_forces(batch)
        energy_field, forces_field = reference_fields(self.as_reference)
        batch[energy_field], batch[forces_field] = energy.to(batch.pos.dtype), forces.to(batch.pos.dtype)
        return batch
