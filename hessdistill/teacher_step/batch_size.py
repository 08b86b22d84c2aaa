"""How many structures go into one teacher call: size-sorted order, batches of similar sizes only, and the
``BatchSizer`` that probes batch sizes on the real work."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def size_sorted(n_atoms: np.ndarray) -> np.ndarray:
    """Order that groups structures of similar size (stable): a batch costs 3·N_max lanes for every member, so
    mixing a 5-atom and a 12-atom molecule wastes most of the small one's lanes (measured for MACE on CPU:
    unsorted batches of 5–12-atom molecules ran at 0.5× of one structure at a time)."""
    return np.argsort(n_atoms, kind="stable")


SIZE_RATIO = 1.5  # a batch's largest structure has at most this many times the atoms of its smallest


def similar_sized(n_atoms: np.ndarray, ratio: float = SIZE_RATIO) -> int:
    """How many of the next structures (atom counts ``n_atoms``, ascending: ``size_sorted`` order, already cut to
    the batch size) go into one call: those with at most ``ratio`` × the first one's atoms (at least one). Every
    member then gets ≥ 1/ratio of the call's 3·N_max lanes for its own rows: a 198-atom molecule is not batched
    with 9–12-atom ones, whose 27–36 rows would otherwise be padded to 594 lanes."""
    return max(1, int(np.searchsorted(n_atoms, ratio * n_atoms[0], side="right")))


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
