"""Inference speed: structures/s at a given batch, the throughput-maximising batch, and ns/day.

A call is energies and forces from raw positions, the student's radius graph included (a teacher builds its own
neighbour list inside its call), so student and teacher are timed on the same work. ns/day follows the paper:
structures/s × 1 fs × 86 400 s/day, i.e. each structure of a batch is one replica advancing by one timestep.
"""

from __future__ import annotations

import copy
import time

import torch
from torch_geometric.data import Batch


def ns_per_day(structures_per_second: float, timestep_fs: float = 1.0) -> float:
    return structures_per_second * timestep_fs * 86_400 * 1e-6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Mean seconds of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def structures_per_second(model, structures, batch_size: int, repeat: int = 3) -> float:
    """Throughput of ``model.energy_forces`` on batches of ``batch_size`` structures (cycled from ``structures``)."""
    p = next(model.parameters())
    data = [structures[k % len(structures)].to_data(p.dtype) for k in range(batch_size)]
    batch = Batch.from_data_list(data).to(p.device)

    def call():
        fresh = copy.copy(batch)  # a student builds its graph on a fresh copy every call, as in MD
        return model.energy_forces(fresh)

    return batch_size / timed(call, p.device, repeat)


def best_batch(model, structures, start: int = 64, max_batch: int = 4096, repeat: int = 3,
               start_rate: float | None = None, gain: float = 1.05) -> tuple[int, float]:
    """Double the batch from ``start`` while throughput improves by ≥ ``gain`` (until memory runs out or
    ``max_batch``); returns (batch, structures/s). ``start_rate``: the rate at ``start`` if already measured."""
    size = start
    rate = start_rate if start_rate is not None else structures_per_second(model, structures, start, repeat)
    while 2 * size <= max_batch:
        try:
            bigger = structures_per_second(model, structures, 2 * size, repeat)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if bigger < gain * rate:
            break
        size, rate = 2 * size, bigger
    return size, rate


def speed_report(model, structures, batch_size: int = 64, max_batch: int = 4096, repeat: int = 3) -> dict:
    """structures/s and ns/day at ``batch_size`` and at the throughput-maximising batch."""
    rate = structures_per_second(model, structures, batch_size, repeat)
    size, best = best_batch(model, structures, batch_size, max_batch, repeat, start_rate=rate)
    return {"batch": batch_size, "structures_per_s": rate, "ns_per_day": ns_per_day(rate),
            "best_batch": size, "best_structures_per_s": best, "best_ns_per_day": ns_per_day(best)}
