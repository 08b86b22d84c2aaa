"""Where a batch's teacher labels come from, chosen once per run: the store's precomputed labels (``StoredLabels``)
or a frozen teacher computing them during training (``OnlineLabels``).

A label source works in two places: ``label_item`` adds fields to one structure's item as the dataset reads it (in a
DataLoader worker), and ``label_batch`` to a collated batch once it is on the training device. Either way a batch
leaves the datamodule with the schema's teacher fields (``hessdistill.data.keys``): teacher_energy (B,) eV,
teacher_forces (Ntot, 3) eV/Å and, when rows are sampled, sampled_rows (B, s) and teacher_rows (s, Ntot, 3) eV/Å²;
with probes (Hessian-vector-product KD, stored labels only), probe_vectors (k, Ntot, 3) and teacher_hvp (k, Ntot, 3)
eV/Å².
"""

from __future__ import annotations

import abc

import torch

from hessdistill.data.keys import (
    PROBE_VECTORS,
    SAMPLED_ROWS,
    TEACHER_ENERGY,
    TEACHER_FORCES,
    TEACHER_HVP,
    TEACHER_NODE_FEATURES,
    TEACHER_ROWS,
    StructureData,
)
from hessdistill.data.store import HessianStore
from hessdistill.hessian.probes import hessian_vector_products
from hessdistill.hessian.row_sampling import UNIFORM, UniformRows
from hessdistill.hessian.rows import RowStrategy


class TeacherLabels(abc.ABC):
    """A source of teacher labels; ``name`` is the teacher's (its store group for stored labels)."""

    name: str
    provides: frozenset[str]  # the batch fields (data.keys) this source adds

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


class StoredLabels(TeacherLabels):
    """The store's labels of teacher ``name``: energy, forces, s rows sampled from the rows the store holds (all 3N,
    or the k of a row-subset store) and, with ``node_features``, the teacher's node features (n2n baseline)."""

    def __init__(self, name: str, node_features: bool = False) -> None:
        self.name, self.node_features = name, node_features
        self.provides = frozenset({TEACHER_ENERGY, TEACHER_FORCES, SAMPLED_ROWS, TEACHER_ROWS, PROBE_VECTORS,
                                   TEACHER_HVP} | ({TEACHER_NODE_FEATURES} if node_features else set()))

    def label_item(self, data, store, i, rows, generator, sampler=UNIFORM) -> None:
        energy, forces = store.teacher_labels(self.name, i)
        data.teacher_energy = torch.tensor([energy], dtype=data.pos.dtype)
        data.teacher_forces = torch.as_tensor(forces, dtype=data.pos.dtype)
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

    def __init__(self, teacher, strategy: RowStrategy = "auto") -> None:
        self.teacher, self.strategy, self.name = teacher.freeze(), strategy, teacher.name
        self.provides = frozenset({TEACHER_ENERGY, TEACHER_FORCES, SAMPLED_ROWS, TEACHER_ROWS})

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
        batch.teacher_energy, batch.teacher_forces = energy.to(batch.pos.dtype), forces.to(batch.pos.dtype)
        return batch
