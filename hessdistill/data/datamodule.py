"""Lightning data module streaming structures and their labels from a HessianStore (or several read as one, a
``StoreSet``).

Nothing is loaded whole: each worker opens the HDF5 file itself and reads one structure (and only its s sampled
Hessian rows) per item. The radius graph is built per structure in the workers. Items and batches follow the batch
schema (``hessdistill.data.keys``); teacher fields come from the run's one label source (``data.labels``).

Stores of teacher-labelled structures (augmentation, on-policy rounds: ``data.added``) can join the training split
(``add_training_store``); validation and test always hold the subset store's own structures only.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torch_geometric.loader import DataLoader

from hessdistill.data.added import Provenance, added_provenance
from hessdistill.data.graph import radius_graph
from hessdistill.data.labels import StoredLabels, TeacherLabels
from hessdistill.data.splits import read_split_file, split_indices, write_split_file
from hessdistill.data.store import HessianStore
from hessdistill.data.store_set import StoreSet, open_stores
from hessdistill.hessian.probes import PROBE_DISTRIBUTIONS, draw_probes, probe_generator
from hessdistill.hessian.row_sampling import UNIFORM, UniformRows, make_row_sampler
from hessdistill.hessian.rows import mixed_seed, rows_generator


class EpochSampler(Sampler):
    """Training order: a permutation seeded by (seed, epoch), yielding (position, epoch) keys so that the dataset can
    seed each structure's Hessian-row draw the same way. Lightning calls ``set_epoch`` before every epoch (also
    after resuming from a checkpoint), so a resumed run sees exactly the batches and rows it would have seen.

    Under DDP (torch.distributed initialised) rank r of w takes every w-th entry from r of the permutation, padded
    by wrapping to a multiple of w: with a per-rank batch of b, the w ranks' k-th batches together are exactly the
    k-th batch of b·w a single process would see, and every rank has the same number of equal-sized batches (so
    averaging the ranks' per-structure means gives the global mean).

    parts: the positions grouped by the store that holds them (a ``StoreSet`` of shard stores). When the w ranks
    divide the parts, rank r draws only from parts r, r+w, … — it reads only its own stores, e.g. those on its
    node's disk — in a permutation seeded by (seed, epoch, r), padded by wrapping to the largest rank's count
    (equal batches on every rank); the union of the ranks' batches is then no longer one process's order.
    Otherwise (one process, or w not dividing the parts) parts are ignored."""

    def __init__(self, n: int, seed: int, parts: list[np.ndarray] | None = None) -> None:
        self.n, self.seed, self.epoch, self.parts = n, seed, 0, parts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _rank_local(self, world: int) -> bool:
        return self.parts is not None and world > 1 and len(self.parts) % world == 0

    def __len__(self) -> int:
        world = self._rank_world()[1]
        if self._rank_local(world):
            return max(sum(len(p) for p in self.parts[r::world]) for r in range(world))
        return -(-self.n // world)

    def __iter__(self):
        rank, world = self._rank_world()
        if self._rank_local(world):
            mine = np.concatenate(self.parts[rank::world])
            order = torch.randperm(len(mine), generator=torch.Generator().manual_seed(
                mixed_seed(self.seed, self.epoch, rank))).numpy()
            return iter([(int(k), self.epoch) for k in np.resize(mine[order], len(self))])
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch)))
        padded = torch.cat([order, order[: len(self) * world - self.n]])
        return iter([(int(k), self.epoch) for k in padded[rank::world]])


class StoreDataset(Dataset):
    """Items of a store: a structure with its radius graph, reference labels and, from ``labels`` (None: none), its
    teacher labels with ``rows`` sampled Hessian rows.

    Rows follow the one seed rule (``hessian.rows.rows_generator``) with ``rows_seed``: a (k, epoch) key from
    ``EpochSampler`` draws fresh rows per epoch (training: pass the run seed); a plain position k draws the same
    rows every time (validation, test, evaluation: pass the split seed). sampler: how rows are drawn
    (``hessian.row_sampling``).

    first_id: the id of the store's structure 0 in the run (``idx`` and the row seed are first_id + i: 0 for the
    subset store, after it for an added store); provenance: origin, energy weight and shift put on each item
    (runs with added stores; None: none).
    probes: random probe vectors per structure with their teacher products H v (``hessian.probes``; 0: none), drawn
    from ``probe_distribution`` by the probes' seed rule (``probe_generator``) with ``rows_seed``.
    """

    def __init__(self, store: HessianStore | StoreSet, indices: np.ndarray, labels: TeacherLabels | None, rows: int,
                 cutoff: float, max_neighbors: int | None = None, dtype: torch.dtype = torch.float32,
                 rows_seed: int = 0, sampler: UniformRows = UNIFORM, first_id: int = 0,
                 provenance: Provenance | None = None, probes: int = 0, probe_distribution: str = "rademacher") -> None:
        self.store, self.indices, self.labels, self.rows = store, np.asarray(indices), labels, rows
        self.cutoff, self.max_neighbors, self.dtype = cutoff, max_neighbors, dtype
        self.rows_seed, self.sampler, self.first_id, self.provenance = rows_seed, sampler, first_id, provenance
        self.probes, self.probe_distribution = probes, probe_distribution

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        """key: a position k, or (k, epoch) from ``EpochSampler``."""
        k, epoch = key if isinstance(key, tuple) else (key, None)
        i = int(self.indices[k])
        data = self.store.structure(i).to_data(self.dtype)
        data.idx = torch.tensor([self.first_id + i])
        data.edge_index, data.edge_shift = radius_graph(data.pos, self.cutoff, self.max_neighbors, data.cell[0],
                                                        data.pbc[0])
        if self.provenance is not None:
            self.provenance.label(data, i)
        if self.labels is not None:
            self.labels.label_item(data, self.store, i, self.rows,
                                   rows_generator(self.first_id + i, self.rows_seed, epoch), self.sampler)
            if self.probes:
                probes = draw_probes(data.num_nodes, self.probes, self.probe_distribution,
                                     probe_generator(self.first_id + i, self.rows_seed, epoch))
                self.labels.label_probes(data, self.store, i, probes)
        return data


class JoinedDataset(Dataset):
    """Datasets one after another (the subset's training structures, then each added store's), indexed like
    ``StoreDataset`` by a position k or (k, epoch)."""

    def __init__(self, parts: list[StoreDataset]) -> None:
        self.parts, self.ends = parts, np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, key):
        k, epoch = key if isinstance(key, tuple) else (key, None)
        part = int(np.searchsorted(self.ends, k, side="right"))
        local = k - (int(self.ends[part - 1]) if part else 0)
        return self.parts[part][local if epoch is None else (local, epoch)]


class StoreDataModule(L.LightningDataModule):
    """Train/val/test loaders over one store, or over several stores of disjoint structures read as one
    (``store``: a list of paths; ``data.store_set``).

    labels: the run's teacher-label source (``StoredLabels`` or ``OnlineLabels``; None: reference labels only);
    rows: Hessian rows per training structure, eval_rows per validation/test structure.
    split: sizes as fractions or counts (``hessdistill.data.splits``); split_by: None splits structures, an info key
    (e.g. "molecule") splits whole groups; split_file: a JSON split record — read when it exists (and checked to
    belong to this store), else written there, so every later run uses exactly the same split.
    seed: the training order and Hessian rows are drawn from it per epoch (``EpochSampler``), reproducibly.
    rank_local: with several stores under DDP, each rank trains on the structures of its own stores only
    (``EpochSampler``'s parts: rank r of w takes stores r, r+w, …).
    row_sampling, row_floor: how training rows are drawn (``hessian.row_sampling``: uniform, teacher_norm, residual,
    worst_rows; the floor of uniform probability mixed into the importance samplers, the random share of worst_rows).
    probes, probe_distribution: random probe vectors per training structure and their distribution (rademacher,
    gaussian), with the teacher's H v (``hessian.probes``; stored full Hessians only).
    """

    def __init__(self, store: str | list[str], labels: TeacherLabels | None = None, rows: int = 1, batch_size: int = 8,
                 eval_batch_size: int = 32, split: tuple = (0.8, 0.1, 0.1), split_seed: int = 0,
                 cutoff: float = 5.0, max_neighbors: int | None = None, num_workers: int = 0, eval_rows: int = 4,
                 dtype: str = "float32", split_by: str | None = None,
                 split_file: str | None = None, seed: int = 0, rank_local: bool = False,
                 row_sampling: str = "uniform", row_floor: float = 0.2, probes: int = 0,
                 probe_distribution: str = "rademacher") -> None:
        super().__init__()
        self.store_path, self.labels, self.rows = store, labels, rows
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.split_sizes, self.split_seed, self.split_by = tuple(split), split_seed, split_by
        self.cutoff, self.max_neighbors = cutoff, max_neighbors
        self.eval_rows, self.seed, self.rank_local = eval_rows, seed, rank_local
        self.dtype = getattr(torch, dtype)
        self.store = open_stores(store)
        self.splits = self._make_splits(split_file)
        self.added: list[tuple[HessianStore, Provenance]] = []
        if row_sampling == "teacher_norm" and labels is not None and not isinstance(labels, StoredLabels):
            raise ValueError("row_sampling=teacher_norm needs the teacher's stored Hessians (teacher_mode=precomputed)"
                             "; an online teacher computes only the drawn rows (use residual or uniform)")
        self.row_sampling, self.row_floor = row_sampling, row_floor
        self.row_sampler = make_row_sampler(row_sampling, row_floor, self._widths)
        if probe_distribution not in PROBE_DISTRIBUTIONS:
            raise ValueError(f"unknown probe_distribution {probe_distribution!r}; choose one of {PROBE_DISTRIBUTIONS}")
        self.probes, self.probe_distribution = probes, probe_distribution
        if probes and labels is not None:
            labels.check_probes(self.store)

    def _make_splits(self, split_file: str | None) -> dict[str, np.ndarray]:
        self.fingerprint = self.store.fingerprint()  # reads every position once; reused by write_split_file
        if split_file is not None and Path(split_file).exists():
            return read_split_file(split_file, self.fingerprint, len(self.store))
        groups = None if self.split_by is None else self.store.info_values(self.split_by)
        splits = split_indices(len(self.store), self.split_sizes, self.split_seed, groups)
        if split_file is not None:
            self.write_split_file(split_file, splits)
        return splits

    def write_split_file(self, path: str | Path, splits: dict[str, np.ndarray] | None = None) -> None:
        """Record the split (indices, store fingerprint, sizes, seed, split_by) as JSON at ``path``."""
        write_split_file(path, self.splits if splits is None else splits, self.fingerprint,
                         store=str(self.store_path), n_structures=len(self.store), split=list(self.split_sizes),
                         seed=self.split_seed, split_by=self.split_by)

    def add_training_store(self, path: str | Path, teacher_energy: str = "forces_only") -> None:
        """Join the structures of the added store at ``path`` (``data.added``) to the training split, after those
        already there; ``teacher_energy``: how their energies enter the loss (``data.added.TEACHER_ENERGY``).
        Refused (StoreError) when it was made for another store or split, or lacks the run's teacher labels."""
        if self.rank_local:
            raise ValueError(f"{path}: added training stores (augment=, on-policy rounds) are read by every rank; "
                             f"rank_local=true reads only each rank's own stores: set datamodule.rank_local=false")
        store = HessianStore(path)
        provenance = added_provenance(store, self.store, self.fingerprint, self.splits["train"], teacher_energy)
        if isinstance(self.labels, StoredLabels):
            store.require_complete(self.labels.name)
        if self.probes and self.labels is not None:
            self.labels.check_probes(store)
        self.added.append((store, provenance))
        self.row_sampler = make_row_sampler(self.row_sampling, self.row_floor, self._widths)

    def _widths(self) -> np.ndarray:
        """Hessian rows 3N of every structure of the run, by id: the subset store's, then each added store's."""
        return np.concatenate([3 * store.n_atoms() for store in (self.store, *(s for s, _ in self.added))])

    def dataset(self, name: str) -> StoreDataset | JoinedDataset:
        """The dataset of split ``name``: training rows per epoch from the run seed, fixed rows from the split seed;
        the training split with the added stores' structures after the subset's."""
        training = name == "train"
        if training and self.added:
            return self._joined_training_set()
        return StoreDataset(self.store, self.splits[name], self.labels, self.rows if training else self.eval_rows,
                            self.cutoff, self.max_neighbors, self.dtype,
                            rows_seed=self.seed if training else self.split_seed,
                            sampler=self.row_sampler if training else UNIFORM, probes=self.probes if training else 0,
                            probe_distribution=self.probe_distribution)

    def _joined_training_set(self) -> JoinedDataset:
        parts, first = [], 0
        for store, provenance in ((self.store, Provenance.reference(len(self.store))), *self.added):
            indices = self.splits["train"] if store is self.store else np.arange(len(store))
            parts.append(StoreDataset(store, indices, self.labels, self.rows, self.cutoff, self.max_neighbors,
                                      self.dtype, rows_seed=self.seed, sampler=self.row_sampler, first_id=first,
                                      provenance=provenance, probes=self.probes,
                                      probe_distribution=self.probe_distribution))
            first += len(store)
        return JoinedDataset(parts)

    def store_parts(self, name: str) -> list[np.ndarray] | None:
        """Positions in split ``name`` grouped by the store holding their structures (None: a single store)."""
        if not isinstance(self.store, StoreSet):
            return None
        owner = np.searchsorted(self.store.starts, self.splits[name], side="right") - 1
        return [np.flatnonzero(owner == k) for k in range(len(self.store.stores))]

    def train_dataloader(self):
        dataset = self.dataset("train")
        parts = self.store_parts("train") if self.rank_local else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochSampler(len(dataset), self.seed, parts),
                          drop_last=False, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.dataset("val"), batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self):
        return DataLoader(self.dataset("test"), batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def state_dict(self) -> dict:
        """What checkpoints keep of the data: the row sampler's state (empty for uniform rows)."""
        return self.row_sampler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.row_sampler.load_state_dict(state_dict)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Labels computed per batch on the training device (online teacher); stored labels pass through."""
        return batch if self.labels is None else self.labels.label_batch(batch)

    def energy_statistics(self) -> tuple[torch.Tensor, float]:
        """Per-element reference energies (119,) eV fitted on the training split, and its force RMS, eV/Å: of the
        reference labels, which are the teacher's when the label source stands in for them (reference=teacher)."""
        if self.labels is not None and self.labels.as_reference:
            refs, force_rms = self.labels.reference_statistics(self.store, self.splits["train"])
        else:
            refs, force_rms = self.store.energy_statistics(self.splits["train"])
        return torch.as_tensor(refs), force_rms
