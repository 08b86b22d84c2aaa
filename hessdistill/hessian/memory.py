"""How many Hessian VJP lanes fit in memory: a budget, a per-lane estimate and the chunk size that follows.

A full Hessian of a batch takes max_i 3N_i VJP lanes (``hessian.full.batched_hessians``); vmapped together, each lane
holds its own gradient of every intermediate in the force graph, so memory grows linearly with the lanes in a
chunk. Before any lane runs, the cost of one lane is estimated from the bytes the autograd graph of the forces
saved (``SavedTensorBytes``); on CUDA every chunk's real peak then replaces the estimate. Measured on CPU
(peak RSS growth per lane over 1–64 lanes, one run): ANI-1x 0.2–0.4× and the small MACE test model 0.95–1.1×
the saved bytes, hence ``LANE_BYTES_FACTOR`` = 1.25 (tested: the estimate bounds the measured growth).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

LANE_BYTES_FACTOR = 1.25  # estimated bytes per lane = this × bytes saved by the force graph
MEASURED_MARGIN = 1.1  # on CUDA, bytes per lane = this × the last chunk's measured peak per lane


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free CUDA memory plus what torch's cache holds unused;
    on CPU the kernel's MemAvailable (or free physical pages where /proc is absent)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryBudget:
    """Memory the VJP lanes of one Hessian call may use: ``gib`` GiB, or (gib None) ``fraction`` of the device's
    free memory measured at each call, after the teacher's graph is built (so larger batches get fewer lanes)."""

    gib: float | None = None
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.gib is not None and self.gib <= 0:
            raise ValueError(f"memory budget must be positive, got {self.gib} GiB")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"memory fraction must be in (0, 1], got {self.fraction}")

    def bytes(self, device: torch.device) -> float:
        return self.gib * 2**30 if self.gib is not None else self.fraction * free_memory(device)

    def halved(self) -> MemoryBudget:
        """The budget after an out-of-memory error: half of it."""
        if self.gib is not None:
            return MemoryBudget(gib=self.gib / 2, fraction=self.fraction)
        return MemoryBudget(fraction=self.fraction / 2)

    def __str__(self) -> str:
        return f"{self.gib:.3g} GiB" if self.gib is not None else f"{self.fraction:.3g} of free memory"


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Context that counts the bytes autograd saves for backward (distinct storages, counted once) while it is
    open: around a teacher's energy and create_graph force pass, that is the size of the graph each VJP lane
    walks. ``nbytes`` after exit."""

    def __init__(self) -> None:
        self._storages: dict[int, int] = {}
        super().__init__(self._pack, lambda tensor: tensor)

    def __enter__(self) -> SavedTensorBytes:
        super().__enter__()
        return self

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self._storages.values())

    def bytes_besides(self, storages: set[int]) -> int:
        """``nbytes`` without the storages whose ``data_ptr`` is in ``storages`` (a model's weights, which exist
        whether or not a graph saves them)."""
        return sum(n for ptr, n in self._storages.items() if ptr not in storages)


class LaneChunker:
    """Lanes per VJP chunk within ``budget_bytes``, starting from an estimate of bytes per lane.

    ``size(remaining)`` gives the next chunk (≥ 1, ≤ remaining); wrapping a chunk's VJP in ``measure(lanes)``
    updates the per-lane cost from CUDA's peak-memory counter (a no-op on CPU, which has no such counter).
    ``sizes`` lists the chunks handed out; ``peaks`` the bytes each measured chunk allocated above its start.
    When the budget holds less than one lane, each chunk gets one lane anyway, and a warning says so (once).
    """

    def __init__(self, budget_bytes: float, bytes_per_lane: float, device: torch.device) -> None:
        self.budget_bytes, self.bytes_per_lane = float(budget_bytes), max(float(bytes_per_lane), 1.0)
        self.device = torch.device(device)
        self.sizes: list[int] = []
        self.peaks: list[int] = []
        self._warned = False

    def size(self, remaining: int) -> int:
        fitting = int(self.budget_bytes // self.bytes_per_lane)
        if fitting < 1 and remaining > 1 and not self._warned:
            self._warned = True
            log.warning("memory budget of %.3g GiB holds less than one Hessian lane (about %.3g GiB each): computing "
                        "one lane per chunk, %d passes for this call; raise memory_budget_gib, lower batch_size or "
                        "use a device with more memory", self.budget_bytes / 2**30, self.bytes_per_lane / 2**30,
                        remaining)
        lanes = int(min(remaining, max(1, fitting)))
        self.sizes.append(lanes)
        return lanes

    @contextlib.contextmanager
    def measure(self, lanes: int):
        if self.device.type != "cuda":
            yield
            return
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        self.peaks.append(torch.cuda.max_memory_allocated(self.device) - before)
        self.bytes_per_lane = max(MEASURED_MARGIN * self.peaks[-1] / lanes, 1.0)


class LanesOutOfMemoryError(torch.cuda.OutOfMemoryError):
    """CUDA ran out of memory in a chunk of ``lanes`` VJP lanes: a caller that sized the chunks from a budget knows
    whether a smaller budget can help (``lanes`` > 1) or not."""

    def __init__(self, lanes: int, message: str) -> None:
        super().__init__(message)
        self.lanes = lanes
