"""Teacher precompute: label every structure of a store with teacher energy, forces and Hessian (full, packed or
k sampled rows), in batches sized by ``batch_size.BatchSizer`` and VJP chunks sized by a memory budget.

Resumable: structures whose completion mark is set are skipped, and a mark is written only after its data. Each
batch's labels are written under the store's lock (``HessianStore.writing``), so precomputes of other teachers can
run on the same store at once; when every structure asked for is done, the group's content digest is written
(``HessianStore.seal_teacher``).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch_geometric.data import Batch
from tqdm import tqdm

from hessdistill.data.store import HessianStore
from hessdistill.hessian.memory import MemoryBudget
from hessdistill.hessian.rows import sample_rows
from hessdistill.teacher_step.batch_size import SIZE_RATIO, BatchSizer, similar_sized, size_sorted
from hessdistill.teachers.base import Teacher

log = logging.getLogger(__name__)


def precompute_teacher(store: HessianStore, teacher: Teacher, batch_size: int | str = 8,
                       chunk_size: int | str | None = "auto", strategy: str = "auto", symmetry_tol: float = 1e-3,
                       progress: bool = True, layout: str = "full", dtype: str = "float32",
                       rows_per_structure: int | None = None, seed: int = 0, indices: np.ndarray | None = None,
                       features: bool = False, max_batch: int = 64, memory_budget_gib: float | None = None,
                       size_ratio: float = SIZE_RATIO) -> dict:
    """Fill ``/teachers/<teacher.name>`` for structures not yet done. Returns counts and the worst asymmetry.

    layout/dtype: Hessian storage (see ``HessianStore.create_teacher``). Layout "rows" computes only
    ``rows_per_structure`` rows per structure (k VJPs per batch instead of 3N_max, disk cut by 3N/k); structure
    i's rows are drawn with seed ``seed + i``, so a resumed run draws the same ones.
    indices: label only these structures (a shard); None: all.
    features: also store the teacher's node features and (where it has them) element embeddings.
    batch_size: structures per teacher call, or "auto": ``BatchSizer`` probes 1, 2, 4, … up to ``max_batch`` on the
    real work and keeps the fastest (on a CPU one MACE structure per call can beat batches; on a GPU large
    batches win). Structures go smallest first, and a batch holds only structures within ``size_ratio`` × the atoms
    of its smallest (``batch_size.similar_sized``), so it may hold fewer than batch_size.
    chunk_size: VJP lanes per chunk of a full-Hessian call; None: all max_i 3N_i at once; "auto": as many as fit in
    ``memory_budget_gib`` GiB (None: half the device's free memory at each call), estimated from each batch's
    graph (``hessdistill.hessian.memory``). On CUDA out-of-memory the batch, then the chunk (or the memory budget), is
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
    order = size_sorted(store.n_atoms()[todo])
    todo, sizes = todo[order], store.n_atoms()[todo][order]
    if features and len(todo):
        _create_features(store, teacher, int(todo[0]))
    worst = 0.0
    chunk = MemoryBudget(gib=memory_budget_gib) if chunk_size == "auto" else chunk_size
    sizer = BatchSizer(batch_size, max_batch)
    bar = tqdm(total=len(todo), desc=f"teacher {teacher.name} Hessians", unit="structure", disable=not progress)
    start = 0
    while start < len(todo):
        idx = todo[start : start + similar_sized(sizes[start : start + sizer.next_size()], size_ratio)]
        data = [store.structure(int(i)).to_data(teacher.dtype) for i in idx]
        for d, i in zip(data, idx):
            d.idx = torch.tensor([int(i)])
        batch = Batch.from_data_list(data)
        began = time.perf_counter()
        try:
            node_features = teacher.node_features(batch).cpu().numpy() if features else None
            if layout == "rows":
                rows = torch.stack([sample_rows(torch.arange(3 * d.num_nodes), rows_per_structure,
                                                torch.Generator().manual_seed(seed + int(i)), f"{store.path}[{i}]")
                                    for d, i in zip(data, idx)])
                out = teacher.hessian_rows(batch, rows, strategy)
            else:
                out = teacher.hessians(batch, chunk, strategy)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            if len(idx) > 1:
                sizer.shrink(len(idx))
            elif layout != "rows" and (smaller := smaller_chunk(chunk, getattr(exc, "lanes", None),
                                                                3 * len(data[0].z))) is not None:
                chunk = smaller
            else:
                raise
            log.warning("CUDA out of memory on %d structure(s); retrying with batch size %d, chunk size %s",
                        len(idx), sizer.next_size(), chunk or "all")
            continue
        if sizer.tuning:
            if teacher.device.type == "cuda":  # time the work, not its launch
                torch.cuda.synchronize(teacher.device)
            widths = 3 * (batch.ptr[1:] - batch.ptr[:-1])  # entries computed: (3N_i)² each, or k·3N_i for rows
            entries = widths * (rows_per_structure if layout == "rows" else widths)
            sizer.record(int(entries.sum()), time.perf_counter() - began)
        with store.writing():
            for k, i in enumerate(idx):
                a, b = int(batch.ptr[k]), int(batch.ptr[k + 1])
                energy, f = float(out.energy[k]), out.forces[a:b].cpu().double().numpy()
                nf = None if node_features is None else node_features[a:b]
                if layout == "rows":
                    h = out.rows[:, a:b].reshape(rows_per_structure, -1).cpu().double().numpy()
                    store.write_teacher(teacher.name, int(i), energy, f, h, rows=rows[k].numpy(), node_features=nf)
                    continue
                h = out.hessians[k].cpu().double().numpy()
                asym = float(np.abs(h - h.T).max()) if out.asymmetry is None else float(out.asymmetry[k])
                worst = max(worst, asym)
                if asym > symmetry_tol:
                    log.warning("%s[%d]: teacher %s Hessian asymmetry %.2e eV/Å² > %.0e", store.path, i,
                                teacher.name, asym, symmetry_tol)
                store.write_teacher(teacher.name, int(i), energy, f, h, asymmetry=asym, node_features=nf)
        start += len(idx)
        bar.update(len(idx))
    bar.close()
    if store.teacher_done(teacher.name)[np.arange(len(store)) if indices is None else indices].all():
        store.seal_teacher(teacher.name)
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


def smaller_chunk(chunk: int | MemoryBudget | None, failed_lanes: int | None,
                  width: int) -> int | MemoryBudget | None:
    """After an out-of-memory error on one structure of ``width`` Hessian rows: half the chunk, or half the memory
    budget while the failed chunk had more than one lane (``failed_lanes``, from ``LanesOutOfMemoryError``; None
    when unknown); None when already at one lane."""
    if isinstance(chunk, MemoryBudget):
        return chunk.halved() if (failed_lanes or 1) > 1 else None
    lanes = width if chunk is None else chunk
    return lanes // 2 if lanes > 1 else None


