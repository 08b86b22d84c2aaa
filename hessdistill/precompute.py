"""Teacher precompute: label every structure of a store with teacher energy, forces and full Hessian.

Resumable: structures whose completion mark is set are skipped, and a mark is written only after its data.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch_geometric.data import Batch
from tqdm import tqdm

from hessdistill.data.store import HessianStore
from hessdistill.teachers.base import Teacher

log = logging.getLogger(__name__)


def precompute_teacher(store: HessianStore, teacher: Teacher, batch_size: int = 8, chunk_size: int | None = None,
                       strategy: str = "auto", symmetry_tol: float = 1e-3, progress: bool = True,
                       layout: str = "full", dtype: str = "float32", rows_per_structure: int | None = None,
                       seed: int = 0) -> dict:
    """Fill ``/teachers/<teacher.name>`` for structures not yet done. Returns counts and the worst asymmetry.

    layout/dtype: Hessian storage (see ``HessianStore.create_teacher``). Layout "rows" computes only
    ``rows_per_structure`` rows per structure (k VJPs per batch instead of 3N_max, disk cut by 3N/k); structure
    i's rows are drawn with seed ``seed + i``, so a resumed run draws the same ones.
    symmetry_tol (eV/Å²): a full Hessian whose max |H − Hᵀ| exceeds it is logged as a warning (stored anyway, with
    its asymmetry recorded) — a conservative teacher's Hessian is symmetric up to float precision.
    """
    group = store.create_teacher(teacher.name, {"teacher": teacher.name, "level_of_theory": teacher.level_of_theory,
                                                "method": teacher.method, "teacher_dtype": str(teacher.dtype)},
                                 layout=layout, dtype=dtype, rows_per_structure=rows_per_structure)
    todo = np.flatnonzero(~group["done"][:])
    worst = 0.0
    bar = tqdm(total=len(todo), desc=f"teacher {teacher.name} Hessians", unit="structure", disable=not progress)
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        data = [store.structure(int(i)).to_data(teacher.dtype) for i in idx]
        for d, i in zip(data, idx):
            d.idx = torch.tensor([int(i)])
        batch = Batch.from_data_list(data)
        if layout == "rows":
            rows = torch.stack([torch.randperm(3 * d.num_nodes, generator=torch.Generator().manual_seed(seed + int(i)))
                                [:rows_per_structure] for d, i in zip(data, idx)])
            energy, forces, lanes = teacher.hessian_rows(batch, rows, strategy)
        else:
            energy, forces, hessians = teacher.hessians(batch, chunk_size, strategy)
        for k, i in enumerate(idx):
            a, b = int(batch.ptr[k]), int(batch.ptr[k + 1])
            f = forces[a:b].cpu().double().numpy()
            if layout == "rows":
                h = lanes[:, a:b].reshape(rows_per_structure, -1).cpu().double().numpy()
                store.write_teacher(teacher.name, int(i), float(energy[k]), f, h, rows=rows[k].numpy())
                continue
            h = hessians[k].cpu().double().numpy()
            raw = teacher.last_asymmetry
            asym = float(np.abs(h - h.T).max()) if raw is None else float(raw[k])
            worst = max(worst, asym)
            if asym > symmetry_tol:
                log.warning("%s[%d]: teacher %s Hessian asymmetry %.2e eV/Å² > %.0e", store.path, i, teacher.name,
                            asym, symmetry_tol)
            store.write_teacher(teacher.name, int(i), float(energy[k]), f, h, asymmetry=asym)
        bar.update(len(idx))
    bar.close()
    return {"computed": int(len(todo)), "total": len(store), "max_asymmetry": worst}
