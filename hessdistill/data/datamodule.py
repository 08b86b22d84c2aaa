"""Lightning data module streaming structures and sampled teacher Hessian rows from a HessianStore.

Nothing is loaded whole: each worker opens the HDF5 file itself and reads one structure (and only its s
sampled Hessian rows) per item. The radius graph is built per structure in the workers.
Per-item fields added to the structure's PyG Data: edge_index (2, E), edge_shift (E, 3) Å, idx (store index),
and with a teacher: teacher_energy (1,) eV, teacher_forces (N, 3) eV/Å, hess_row (1, s) row indices sampled
uniformly from the rows the store holds (all 3N, or the k of a row-subset store),
hess_rows (N, s, 3) eV/Å² (batched: (Ntot, s, 3), ``.permute(1, 0, 2)`` gives the (s, Ntot, 3) lanes).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torch_geometric.loader import DataLoader

from hessdistill.data.graph import radius_graph
from hessdistill.data.splits import read_split_file, split_indices, write_split_file
from hessdistill.data.store import HessianStore
from hessdistill.hessian import rows_to_atom_layout


def _sample_rows(available: torch.Tensor, s: int, generator: torch.Generator | None, where: str) -> torch.Tensor:
    """s distinct rows drawn uniformly from ``available`` (1-D), as (1, s) so PyG stacks them to (B, s)."""
    if len(available) < s:
        raise ValueError(f"{where}: {s} Hessian rows asked per structure, {len(available)} stored")
    return available[torch.randperm(len(available), generator=generator)[:s]].unsqueeze(0)


def epoch_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative keys, e.g. (run seed, epoch) for the order or (run seed, epoch, structure)
    for its rows: independent streams, the same on every resume."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler):
    """Training order: a permutation seeded by (seed, epoch), yielding (position, epoch) keys so that the dataset can
    seed each structure's Hessian-row draw the same way. Lightning calls ``set_epoch`` before every epoch (also
    after resuming from a checkpoint), so a resumed run sees exactly the batches and rows it would have seen.

    Under DDP (torch.distributed initialised) rank r of w takes every w-th entry from r of the permutation, padded
    by wrapping to a multiple of w: with a per-rank batch of b, the w ranks' k-th batches together are exactly the
    k-th batch of b·w a single process would see, and every rank has the same number of equal-sized batches (so
    averaging the ranks' per-structure means gives the global mean)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return -(-self.n // self._rank_world()[1])

    def __iter__(self):
        rank, world = self._rank_world()
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        padded = torch.cat([order, order[: len(self) * world - self.n]])
        return iter([(int(k), self.epoch) for k in padded[rank::world]])


class StoreDataset(Dataset):
    """Items of a store as PyG Data with graph, teacher labels and s sampled Hessian rows.

    teacher: the store's teacher group to read labels and rows from, or None. online: sample s row indices
    over all 3N rows (``hess_row`` only) for a teacher that computes them during training; no teacher labels read.
    node_features: also read the teacher's node features, teacher_node_features (N, F_t) (n2n baseline).
    fixed_rows_seed: an int gives each structure the same rows every epoch (validation/test); None draws fresh rows:
    seeded by (rows_seed, epoch, structure) for (k, epoch) keys from ``EpochSampler`` (training), else from torch's
    global generator.
    """

    def __init__(self, store: HessianStore, indices: np.ndarray, teacher: str | None, rows: int, cutoff: float,
                 max_neighbors: int, graph_backend: str = "auto", dtype: torch.dtype = torch.float32,
                 fixed_rows_seed: int | None = None, online: bool = False, node_features: bool = False,
                 rows_seed: int = 0) -> None:
        self.store, self.indices, self.teacher, self.rows = store, np.asarray(indices), teacher, rows
        self.node_features, self.rows_seed = node_features, rows_seed
        self.cutoff, self.max_neighbors, self.graph_backend, self.dtype = cutoff, max_neighbors, graph_backend, dtype
        self.fixed_rows_seed, self.online = fixed_rows_seed, online

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        """key: a position k, or (k, epoch) from ``EpochSampler`` (rows seeded by rows_seed, epoch and structure)."""
        k, epoch = key if isinstance(key, tuple) else (key, None)
        i = int(self.indices[k])
        data = self.store.structure(i).to_data(self.dtype)
        data.idx = torch.tensor([i])
        data.edge_index, data.edge_shift = radius_graph(data.pos, self.cutoff, self.max_neighbors, data.cell[0],
                                                        data.pbc[0], self.graph_backend)
        if self.fixed_rows_seed is not None:
            gen = torch.Generator().manual_seed(self.fixed_rows_seed + i)
        elif epoch is not None:
            gen = torch.Generator().manual_seed(epoch_seed(self.rows_seed, epoch, i))
        else:
            gen = None
        if self.online and self.rows > 0:
            data.hess_row = _sample_rows(torch.arange(3 * data.num_nodes), self.rows, gen, f"{self.store.path}[{i}]")
        elif self.teacher is not None:
            energy, forces = self.store.teacher_labels(self.teacher, i)
            data.teacher_energy = torch.tensor([energy], dtype=self.dtype)
            data.teacher_forces = torch.as_tensor(forces, dtype=self.dtype)
            if self.node_features:
                data.teacher_node_features = torch.as_tensor(self.store.node_features(self.teacher, i), dtype=self.dtype)
            if self.rows > 0:
                available = torch.as_tensor(self.store.stored_rows(self.teacher, i))
                data.hess_row = _sample_rows(available, self.rows, gen, f"{self.store.path}[{i}]")
                h = self.store.hessian_rows(self.teacher, i, data.hess_row[0].numpy())
                data.hess_rows = rows_to_atom_layout(torch.as_tensor(h, dtype=self.dtype))
        return data


class StoreDataModule(L.LightningDataModule):
    """Train/val/test loaders over one store.

    split: sizes as fractions or counts (``hessdistill.data.splits``); split_by: None splits structures, an info key
    (e.g. "molecule") splits whole groups; split_file: a JSON split record — read when it exists (and checked to
    belong to this store), else written there, so every later run uses exactly the same split.
    online: the teacher runs during training (``DistillModule(teacher=...)``); items carry sampled row indices only.
    node_features: items also carry the teacher's node features (the store must have them: features=true).
    seed: the training order and Hessian rows are drawn from it per epoch (``EpochSampler``), reproducibly.
    """

    def __init__(self, store: str, teacher: str | None = None, rows: int = 1, batch_size: int = 8,
                 eval_batch_size: int = 32, split: tuple = (0.8, 0.1, 0.1), split_seed: int = 0,
                 cutoff: float = 5.0, max_neighbors: int = 50, graph_backend: str = "auto", num_workers: int = 0,
                 eval_rows: int = 4, dtype: str = "float32", online: bool = False, split_by: str | None = None,
                 split_file: str | None = None, node_features: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.store_path, self.teacher, self.rows = store, teacher, rows
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.split_sizes, self.split_seed, self.split_by = tuple(split), split_seed, split_by
        self.cutoff, self.max_neighbors, self.graph_backend = cutoff, max_neighbors, graph_backend
        self.eval_rows, self.online, self.node_features, self.seed = eval_rows, online, node_features, seed
        self.dtype = getattr(torch, dtype)
        self.store = HessianStore(store)
        self.splits = self._make_splits(split_file)
        if online and teacher is not None:
            raise ValueError("online teacher mode reads no teacher labels from the store: pass teacher=None")
        if teacher is not None:
            done = self.store.teacher_done(teacher)
            if not done.all():
                raise ValueError(f"{store}: teacher {teacher!r} labels exist for {int(done.sum())}/{len(done)} structures;"
                                 f" finish precompute first")

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

    def dataset(self, name: str) -> StoreDataset:
        training = name == "train"
        return StoreDataset(self.store, self.splits[name], self.teacher, self.rows if training else self.eval_rows,
                            self.cutoff, self.max_neighbors, self.graph_backend, self.dtype,
                            fixed_rows_seed=None if training else 10_000 * (1 + self.split_seed), online=self.online,
                            node_features=self.node_features, rows_seed=self.seed)

    def train_dataloader(self):
        dataset = self.dataset("train")
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochSampler(len(dataset), self.seed), drop_last=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.dataset("val"), batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self):
        return DataLoader(self.dataset("test"), batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def energy_statistics(self) -> tuple[torch.Tensor, float]:
        """Per-element reference energies (119,) eV by least squares on the training split, and force RMS eV/Å."""
        g = self.store.file["structures"]
        z, offsets, energy = g["z"][:], self.store.offsets, g["energy"][:]
        train = self.splits["train"]
        counts = np.zeros((len(train), 119))
        for row, i in enumerate(train):
            np.add.at(counts[row], z[offsets[i] : offsets[i + 1]], 1)
        present = counts.any(axis=0)
        coef, *_ = np.linalg.lstsq(counts[:, present], energy[train], rcond=None)
        refs = np.zeros(119)
        refs[present] = coef
        atoms = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in train])
        force_rms = float(np.sqrt((g["forces"][:][atoms] ** 2).mean()))
        return torch.as_tensor(refs), force_rms
