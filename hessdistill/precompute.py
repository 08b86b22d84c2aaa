"""Teacher precompute: label every structure of a store with teacher energy, forces and full Hessian.

Resumable: structures whose completion mark is set are skipped, and a mark is written only after its data.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch_geometric.data import Batch
from tqdm import tqdm

from hessdistill.data.store import HessianStore
from hessdistill.lane_memory import MemoryBudget
from hessdistill.teachers.base import Teacher

log = logging.getLogger(__name__)


def precompute_teacher(store: HessianStore, teacher: Teacher, batch_size: int | str = 8,
                       chunk_size: int | str | None = "auto", strategy: str = "auto", symmetry_tol: float = 1e-3,
                       progress: bool = True, layout: str = "full", dtype: str = "float32",
                       rows_per_structure: int | None = None, seed: int = 0, indices: np.ndarray | None = None,
                       features: bool = False, max_batch: int = 64, memory_budget_gib: float | None = None) -> dict:
    """Fill ``/teachers/<teacher.name>`` for structures not yet done. Returns counts and the worst asymmetry.

    layout/dtype: Hessian storage (see ``HessianStore.create_teacher``). Layout "rows" computes only
    ``rows_per_structure`` rows per structure (k VJPs per batch instead of 3N_max, disk cut by 3N/k); structure
    i's rows are drawn with seed ``seed + i``, so a resumed run draws the same ones.
    indices: label only these structures (a shard); None: all.
    features: also store the teacher's node features and (where it has them) element embeddings.
    batch_size: structures per teacher call, or "auto": ``BatchSizer`` probes 1, 2, 4, … up to ``max_batch`` on the
    real work and keeps the fastest (on a CPU one MACE structure per call can beat batches; on a GPU large
    batches win).
    chunk_size: VJP lanes per chunk of a full-Hessian call; None: all max_i 3N_i at once; "auto": as many as fit in
    ``memory_budget_gib`` GiB (None: half the device's free memory at each call), estimated from each batch's
    graph (``hessdistill.lane_memory``). On CUDA out-of-memory the batch, then the chunk (or the memory budget), is
    halved and the batch retried.
    symmetry_tol (eV/Å²): a full Hessian whose max |H − Hᵀ| exceeds it is logged as a warning (stored anyway, with
    its asymmetry recorded) — a conservative teacher's Hessian is symmetric up to float precision.
    """
    group = store.create_teacher(teacher.name, {"teacher": teacher.name, "level_of_theory": teacher.level_of_theory,
                                                "method": teacher.method, "teacher_dtype": str(teacher.dtype)},
                                 layout=layout, dtype=dtype, rows_per_structure=rows_per_structure)
    todo = np.flatnonzero(~group["done"][:])
    if indices is not None:
        todo = np.intersect1d(todo, indices)
    todo = todo[size_sorted(store.n_atoms()[todo])]
    if features and len(todo):
        _create_features(store, teacher, int(todo[0]))
    worst = 0.0
    chunk = MemoryBudget(gib=memory_budget_gib) if chunk_size == "auto" else chunk_size
    sizer = BatchSizer(batch_size, max_batch)
    bar = tqdm(total=len(todo), desc=f"teacher {teacher.name} Hessians", unit="structure", disable=not progress)
    start = 0
    while start < len(todo):
        idx = todo[start : start + sizer.next_size()]
        data = [store.structure(int(i)).to_data(teacher.dtype) for i in idx]
        for d, i in zip(data, idx):
            d.idx = torch.tensor([int(i)])
        batch = Batch.from_data_list(data)
        began = time.perf_counter()
        try:
            node_features = teacher.node_features(batch).cpu().numpy() if features else None
            if layout == "rows":
                rows = torch.stack([torch.randperm(3 * d.num_nodes, generator=torch.Generator().manual_seed(seed + int(i)))
                                    [:rows_per_structure] for d, i in zip(data, idx)])
                energy, forces, lanes = teacher.hessian_rows(batch, rows, strategy)
            else:
                energy, forces, hessians = teacher.hessians(batch, chunk, strategy)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(idx) > 1:
                sizer.shrink(len(idx))
            elif layout != "rows" and (smaller := smaller_chunk(chunk, teacher, 3 * len(data[0].z))) is not None:
                chunk = smaller
            else:
                raise
            log.warning("CUDA out of memory on %d structure(s); retrying with batch size %d, chunk size %s",
                        len(idx), sizer.next_size(), chunk or "all")
            continue
        if sizer.tuning:
            if batch.pos.is_cuda:
                torch.cuda.synchronize()
            widths = 3 * (batch.ptr[1:] - batch.ptr[:-1])  # entries computed: (3N_i)² each, or k·3N_i for rows
            entries = widths * (rows_per_structure if layout == "rows" else widths)
            sizer.record(int(entries.sum()), time.perf_counter() - began)
        for k, i in enumerate(idx):
            a, b = int(batch.ptr[k]), int(batch.ptr[k + 1])
            f = forces[a:b].cpu().double().numpy()
            nf = None if node_features is None else node_features[a:b]
            if layout == "rows":
                h = lanes[:, a:b].reshape(rows_per_structure, -1).cpu().double().numpy()
                store.write_teacher(teacher.name, int(i), float(energy[k]), f, h, rows=rows[k].numpy(), node_features=nf)
                continue
            h = hessians[k].cpu().double().numpy()
            raw = teacher.last_asymmetry
            asym = float(np.abs(h - h.T).max()) if raw is None else float(raw[k])
            worst = max(worst, asym)
            if asym > symmetry_tol:
                log.warning("%s[%d]: teacher %s Hessian asymmetry %.2e eV/Å² > %.0e", store.path, i, teacher.name,
                            asym, symmetry_tol)
            store.write_teacher(teacher.name, int(i), float(energy[k]), f, h, asymmetry=asym, node_features=nf)
        start += len(idx)
        bar.update(len(idx))
    bar.close()
    return {"computed": int(len(todo)), "total": len(store), "max_asymmetry": worst, "batch_size": sizer.next_size(),
            "batch_rates": sizer.rates, "chunk_size": str(chunk) if chunk is not None else "all"}


def _create_features(store: HessianStore, teacher: Teacher, probe: int) -> None:
    """Size the node-feature dataset from one structure and store element embeddings when the teacher has them."""
    width = teacher.node_features(Batch.from_data_list([store.structure(probe).to_data(teacher.dtype)])).shape[1]
    try:
        z, embeddings = teacher.element_embeddings()
        z, embeddings = z.cpu().numpy(), embeddings.cpu().numpy()
    except NotImplementedError as exc:
        log.info("%s; storing node features only", exc)
        z = embeddings = None
    store.create_features(teacher.name, width, z, embeddings)


def smaller_chunk(chunk: int | MemoryBudget | None, teacher: Teacher, width: int) -> int | MemoryBudget | None:
    """After an out-of-memory error on one structure of ``width`` Hessian rows: half the chunk, or half the memory
    budget while the failed call ran chunks of more than one lane; None when already at one lane."""
    if isinstance(chunk, MemoryBudget):
        return chunk.halved() if max(teacher.last_chunk_sizes or [1]) > 1 else None
    lanes = width if chunk is None else chunk
    return lanes // 2 if lanes > 1 else None


def size_sorted(n_atoms: np.ndarray) -> np.ndarray:
    """Order that groups structures of similar size (stable): a batch costs 3·N_max lanes for every member, so
    mixing a 5-atom and a 12-atom molecule wastes most of the small one's lanes (measured for MACE on CPU:
    unsorted batches of 5–12-atom molecules ran at 0.5× of one structure at a time)."""
    return np.argsort(n_atoms, kind="stable")


class BatchSizer:
    """Structures per teacher call: a fixed number, or "auto" — probe 1, 2, 4, … (≤ max_batch) on the real work
    and keep the size with the most Hessian entries per second (Σ (3N_i)² per second: one structure costs about
    3N_i VJPs of N_i-atom work, so this rate is size-independent where structures/s is not, and precompute
    goes through structures smallest first).

    Each probed size is timed over batches adding up to ≥ ``min_seconds`` (the first batch, which pays one-off
    warm-up costs, is not timed). A larger size is only taken if it is ≥ ``margin`` faster than the best so far,
    so noise does not push the batch (and its memory) up. ``rates`` maps probed sizes to entries/s.
    """

    def __init__(self, batch_size: int | str = "auto", max_batch: int = 64, min_seconds: float = 1.0,
                 margin: float = 1.1) -> None:
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.size = 1 if batch_size == "auto" else batch_size
        self.tuning = batch_size == "auto"
        self.max_batch, self.min_seconds, self.margin = max(1, int(max_batch)), min_seconds, margin
        self.rates: dict[int, float] = {}
        self._entries = self._seconds = 0.0
        self._warm = False

    def next_size(self) -> int:
        return self.size

    def record(self, n_entries: int, seconds: float) -> None:
        """Time of one call of the current size that computed ``n_entries`` Hessian entries."""
        if not self.tuning:
            return
        if not self._warm:
            self._warm = True
            return
        self._entries, self._seconds = self._entries + n_entries, self._seconds + seconds
        if self._seconds < self.min_seconds:
            return
        rate = self._entries / self._seconds
        best = max(self.rates.values(), default=0.0)
        self.rates[self.size] = rate
        self._entries = self._seconds = 0.0
        if rate < self.margin * best:  # no clear gain from the larger size: settle
            self.size, self.tuning = self._settled(), False
        elif 2 * self.size > self.max_batch:
            self.size, self.tuning = self._settled(), False
        else:
            self.size *= 2
        if not self.tuning:
            log.info("batch_size auto: Hessian entries/s by batch size %s; using %d",
                     {k: round(v, 1) for k, v in self.rates.items()}, self.size)

    def _settled(self) -> int:
        """The smallest probed size within ``margin`` of the fastest (less memory for the same speed)."""
        fastest = max(self.rates.values())
        return min(size for size, rate in self.rates.items() if rate * self.margin >= fastest)

    def shrink(self, failed: int) -> None:
        """A call of ``failed`` structures ran out of memory: halve, and stop growing."""
        self.size, self.tuning = max(1, failed // 2), False
        self.max_batch = self.size


def parse_shard(shard: str) -> tuple[int, int]:
    """"i/n" → (i, n) with 0 ≤ i < n."""
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError as exc:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {shard!r}") from exc
    if not 0 <= i < n:
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


def shard_indices(n_structures: int, i: int, n: int) -> np.ndarray:
    """Structures of shard i of n: every n-th one from i, so shards get similar mixes of sizes."""
    return np.arange(i, n_structures, n)


def shard_path(store_path: Path, teacher: str, i: int, n: int) -> Path:
    return store_path.with_name(f"{store_path.stem}.{teacher}.shard-{i}-of-{n}.h5")


def open_shard(store: HessianStore, teacher: str, i: int, n: int) -> HessianStore:
    """The shard file of shard i/n (created with a copy of the store's structures on first use)."""
    path = shard_path(store.path, teacher, i, n)
    if not path.exists():
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        with h5py.File(partial, "w") as out:
            out.attrs.update(dict(store.file.attrs))
            store.file.copy(store.file["structures"], out, "structures")
        partial.rename(path)
    return HessianStore(path, mode="a")


def merge_shards(store: HessianStore, teacher: str, n: int) -> int:
    """Copy the finished structures of all n shard files of ``teacher`` into ``store``; returns how many.

    Every shard must exist, hold the same structures as the store and have finished its part; blocks are copied
    verbatim (same layout, same offsets), data first and completion marks last, so a killed merge can be rerun.
    """
    paths = [shard_path(store.path, teacher, i, n) for i in range(n)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot merge {teacher!r} shards of {store.path}: missing {missing}")
    merged = 0
    for i, path in enumerate(paths):
        with HessianStore(path) as shard:
            if not np.array_equal(shard.offsets, store.offsets) or not np.array_equal(
                    shard.file["structures/z"][:], store.file["structures/z"][:]):
                raise ValueError(f"{path} holds different structures from {store.path}")
            src = shard.teacher_group(teacher)
            mine = shard_indices(len(store), i, n)
            if not src["done"][:][mine].all():
                raise ValueError(f"{path}: shard {i}/{n} has not finished ({int(src['done'][:][mine].sum())}/"
                                 f"{len(mine)} structures); rerun it before merging")
            attrs = dict(src.attrs)
            dst = store.create_teacher(teacher, attrs, layout=attrs["hessian_layout"], dtype=attrs["hessian_dtype"],
                                       rows_per_structure=attrs.get("rows_per_structure"))
            if "node_features" in src:
                has_embeddings = "element_embeddings" in src
                store.create_features(teacher, src["node_features"].shape[1],
                                      src["element_z"][:] if has_embeddings else None,
                                      src["element_embeddings"][:] if has_embeddings else None)
            for j in mine:
                a, b = int(store.offsets[j]), int(store.offsets[j + 1])
                h0, h1 = (int(x) for x in src["hessian_offsets"][j : j + 2])
                dst["energy"][j], dst["asymmetry"][j] = src["energy"][j], src["asymmetry"][j]
                dst["forces"][a:b] = src["forces"][a:b]
                dst["hessian"][h0:h1] = src["hessian"][h0:h1]
                if "hessian_row_index" in src:
                    dst["hessian_row_index"][j] = src["hessian_row_index"][j]
                if "node_features" in src:
                    dst["node_features"][a:b] = src["node_features"][a:b]
            store.file.flush()
            dst["done"][mine] = True
            store.file.flush()
            merged += len(mine)
    return merged
