"""Several stores read as one: the route for data sets beyond one file, disk or node.

A ``StoreSet`` concatenates stores of disjoint structures (e.g. one per source file, or per part of a subset, each
built and precomputed on its own node): structure g of the set is structure g − start_k of store k, where store k
holds positions start_k … start_k + M_k − 1. It answers what the datamodule, the label sources and the training
module ask of a ``HessianStore`` (structures, teacher labels and rows, splits' info, statistics, fingerprint), each
read going to the one store that holds the structure; nothing is copied or merged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hessdistill.data.statistics import EnergyStatistics
from hessdistill.data.store import HessianStore, StoreError
from hessdistill.data.structures import Structure


def open_stores(store: str | Path | Sequence[str | Path]) -> HessianStore | StoreSet:
    """One path: its ``HessianStore``; several: a ``StoreSet`` of them, in the given order."""
    if isinstance(store, (str, Path)):
        return HessianStore(store)
    paths = list(store)
    return HessianStore(paths[0]) if len(paths) == 1 else StoreSet(paths)


class StoreSet:
    """Stores of disjoint structures as one store of Σ M_k structures (read-only)."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        if not paths:
            raise StoreError("a store set needs at least one store")
        self.stores = [HessianStore(p) for p in paths]
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.stores])]).astype(np.int64)
        self.path = Path("+".join(str(s.path) for s in self.stores))  # for messages: "<a.h5+b.h5>[g]"

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, g: int) -> tuple[HessianStore, int]:
        """The store holding structure g of the set, and g's index in it."""
        if not 0 <= g < len(self):
            raise IndexError(f"{self.path}: structure {g} out of range 0..{len(self) - 1}")
        k = int(np.searchsorted(self.starts, g, side="right")) - 1
        return self.stores[k], int(g - self.starts[k])

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def __enter__(self) -> StoreSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- structures ----------------------------------------------------------------------------------------------
    def n_atoms(self, g: int | None = None):
        if g is None:
            return np.concatenate([s.n_atoms() for s in self.stores])
        store, i = self.locate(g)
        return store.n_atoms(i)

    def structure(self, g: int) -> Structure:
        store, i = self.locate(g)
        return store.structure(i)

    def info_values(self, key: str) -> list:
        return [value for s in self.stores for value in s.info_values(key)]

    def fingerprint(self) -> str:
        """SHA-1 of the member stores' fingerprints in order (a split file is valid for this set only)."""
        return hashlib.sha1("+".join(s.fingerprint() for s in self.stores).encode()).hexdigest()

    def energy_statistics(self, indices: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """As ``HessianStore.energy_statistics`` over structures ``indices`` of the set (None: all): one streamed
        pass over each member store's part."""
        chosen = np.arange(len(self)) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        statistics = EnergyStatistics()
        for k, store in enumerate(self.stores):
            part = chosen[np.searchsorted(chosen, self.starts[k]) : np.searchsorted(chosen, self.starts[k + 1])]
            store.accumulate_statistics(statistics, part - self.starts[k])
        return statistics.result()

    # ---- teachers ------------------------------------------------------------------------------------------------
    def teacher_done(self, teacher: str) -> np.ndarray:
        return np.concatenate([s.teacher_done(teacher) for s in self.stores])

    def is_complete(self, teacher: str) -> bool:
        return all(s.is_complete(teacher) for s in self.stores)

    def require_complete(self, teacher: str, command: str | None = None) -> None:
        for s in self.stores:
            s.require_complete(teacher, command)

    def teacher_labels(self, teacher: str, g: int) -> tuple[float, np.ndarray]:
        store, i = self.locate(g)
        return store.teacher_labels(teacher, i)

    def stored_rows(self, teacher: str, g: int) -> np.ndarray:
        store, i = self.locate(g)
        return store.stored_rows(teacher, i)

    def hessian_rows(self, teacher: str, g: int, rows: np.ndarray) -> np.ndarray:
        store, i = self.locate(g)
        return store.hessian_rows(teacher, i, rows)

    def hessian(self, teacher: str, g: int) -> np.ndarray:
        store, i = self.locate(g)
        return store.hessian(teacher, i)

    def node_features(self, teacher: str, g: int) -> np.ndarray:
        store, i = self.locate(g)
        return store.node_features(teacher, i)

    def node_feature_width(self, teacher: str) -> int:
        widths = {s.node_feature_width(teacher) for s in self.stores}
        if len(widths) != 1:
            raise StoreError(f"{self.path}: teacher {teacher!r} node features of different widths {sorted(widths)}")
        return widths.pop()

    def element_embeddings(self, teacher: str) -> tuple[np.ndarray, np.ndarray]:
        return self.stores[0].element_embeddings(teacher)
