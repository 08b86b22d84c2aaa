"""Inference speed: structures/s at a given batch, the throughput-maximising batch, and ns/day.

A call is energies and forces from raw positions, the student's radius graph included (a teacher builds its own
neighbour list inside its call), so student and teacher are timed on the same work. ns/day follows the paper:
structures/s × 1 fs × 86 400 s/day, i.e. each structure of a batch is one replica advancing by one timestep.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

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


def doubling_search(rate: Callable[[int], float], start: int, limit: int, start_rate: float | None = None,
                    gain: float = 1.05) -> tuple[int, float]:
    """Double a size from ``start`` while ``rate(size)`` improves by ≥ ``gain`` (until ``limit`` or CUDA runs out of
    memory); returns (size, its rate). ``start_rate``: the rate at ``start`` if already measured."""
    size = start
    best = start_rate if start_rate is not None else rate(start)
    while 2 * size <= limit:
        try:
            bigger = rate(2 * size)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if bigger < gain * best:
            break
        size, best = 2 * size, bigger
    return size, best


def best_batch(model, structures, start: int = 64, max_batch: int = 4096, repeat: int = 3,
               start_rate: float | None = None, gain: float = 1.05) -> tuple[int, float]:
    """The batch of best throughput (structures/s), doubling from ``start`` (``doubling_search``)."""
    return doubling_search(lambda size: structures_per_second(model, structures, size, repeat), start, max_batch,
                           start_rate, gain)


def speed_report(model, structures, batch_size: int = 64, max_batch: int = 4096, repeat: int = 3) -> dict:
    """structures/s and ns/day at ``batch_size`` and at the throughput-maximising batch."""
    rate = structures_per_second(model, structures, batch_size, repeat)
    size, best = best_batch(model, structures, batch_size, max_batch, repeat, start_rate=rate)
    return {"batch": batch_size, "structures_per_s": rate, "ns_per_day": ns_per_day(rate),
            "best_batch": size, "best_structures_per_s": best, "best_ns_per_day": ns_per_day(best)}
