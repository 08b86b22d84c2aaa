"""Full Hessians of every structure of a batch: max_i 3N_i VJP lanes, in chunks that fit memory."""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import Tensor

from hessdistill.hessian.memory import LaneChunker, LanesOutOfMemoryError
from hessdistill.hessian.rows import RowStrategy, resolve_strategy, row_lanes, vjp_lanes

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0  # a call running longer logs how many of its lanes are done, at most this often


def batched_hessians(
    forces: Tensor, pos: Tensor, ptr: Tensor, chunk_size: int | LaneChunker | None = None,
    strategy: RowStrategy = "auto",
) -> list[Tensor]:
    """Full Hessians H_i = −∂F/∂r of every structure in a batch with max_i 3N_i lanes.

    forces: (Ntot, 3) differentiable w.r.t. pos (Ntot, 3) (computed with create_graph=True).
    chunk_size: lanes per VJP batch (None: all at once), or a ``LaneChunker`` that sizes each chunk from a memory
    budget. Returns a list of B tensors (3N_i, 3N_i) eV/Å², detached. A CUDA out-of-memory error in a chunk is
    raised as ``LanesOutOfMemoryError`` carrying the chunk's lane count. A call running longer than
    ``PROGRESS_SECONDS`` logs its progress through the lanes at that interval (large structures take minutes).
    strategy "auto" is "vmap" on every device: with tens of lanes one batched backward beats a loop on CPU too
    (benchmarks/teacher_hessians.py, one structure per call: ANI-1x 4.8×, the small MACE test model 1.4×).
    """
    n_rows = 3 * (ptr[1:] - ptr[:-1])
    width = int(n_rows.max())
    if not isinstance(chunk_size, LaneChunker):
        chunk_size = _FixedChunks(width if chunk_size is None else max(1, int(chunk_size)))
    strategy = "vmap" if strategy == "auto" else resolve_strategy(strategy, pos.device)
    blocks, start = [], 0
    began = reported = time.perf_counter()
    while start < width:
        chunk = chunk_size.size(width - start)
        k = torch.arange(start, start + chunk, device=pos.device)
        rows = torch.where(k[None, :] < n_rows[:, None], k[None, :], -1)
        lanes = row_lanes(rows, ptr, dtype=forces.dtype)
        try:
            with chunk_size.measure(chunk):
                blocks.append(vjp_lanes(forces, pos, lanes, create_graph=False, strategy=strategy).detach())
        except torch.cuda.OutOfMemoryError as exc:
            raise LanesOutOfMemoryError(chunk, f"{exc} (in a chunk of {chunk} Hessian lanes)") from exc
        start += chunk
        if start < width and time.perf_counter() - reported >= PROGRESS_SECONDS:
            reported = time.perf_counter()
            log.info("Hessian lanes %d/%d done after %.0f s (%d structure(s) of up to %d atoms, chunks of %d lanes)",
                     start, width, reported - began, len(n_rows), width // 3, chunk)
    jac = torch.cat(blocks).flatten(1)  # (width, 3·Ntot): lane k = row k of every structure
    return [-jac[: 3 * (b - a), 3 * a : 3 * b] for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())]


class _FixedChunks:
    """A fixed number of lanes per chunk (the ``LaneChunker`` interface without a budget)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def size(self, remaining: int) -> int:
        return min(self.lanes, remaining)

    def measure(self, lanes: int) -> contextlib.nullcontext:
        return contextlib.nullcontext()


