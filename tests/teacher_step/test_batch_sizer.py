"""``batch_size=auto``: the probe keeps the fastest batch size, precompute with variable batches gives the same
Hessians as one structure per call, and CUDA out-of-memory halves the batch instead of failing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import WrappedTeacher, label_with, rattled
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.teacher_step.batch_size import BatchSizer
from hessdistill.teacher_step.run import precompute_teacher


def drive(sizer: BatchSizer, rate_of_size, calls: int = 40, entries: int = 1000) -> list[int]:
    """Feed the sizer calls whose time follows ``rate_of_size`` (entries/s); returns the sizes it asked for."""
    asked = []
    for _ in range(calls):
        size = sizer.next_size()
        asked.append(size)
        sizer.record(entries * size, entries * size / rate_of_size(size))
    return asked


def test_fixed_batch_size_never_changes():
    sizer = BatchSizer(8)
    assert drive(sizer, lambda b: 100.0) == [8] * 40 and not sizer.tuning and sizer.rates == {}
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        BatchSizer(0)


@pytest.mark.parametrize("rates, chosen", [
    ({1: 100, 2: 90, 4: 80}, 1),                  # batching loses (MACE on a CPU): stay at one per call
    ({1: 100, 2: 150, 4: 200, 8: 205, 16: 300}, 4),  # 8 is not clearly faster than 4: stop there
    ({1: 100, 2: 105, 4: 1000}, 1),               # a gain under the 10 % margin does not count
    ({b: 100.0 * b for b in (1, 2, 4, 8, 16, 32, 64)}, 16),  # always faster: up to max_batch
])
def test_auto_probe_keeps_the_fastest_size(rates, chosen):
    sizer = BatchSizer("auto", max_batch=16, min_seconds=25.0)
    asked = drive(sizer, lambda b: rates[b])
    assert sizer.next_size() == chosen and not sizer.tuning
    assert asked[0] == asked[1] == 1  # the first (warm-up) call is not timed
    assert set(sizer.rates) <= set(rates) and max(sizer.rates, key=sizer.rates.get) >= chosen
    assert asked[-1] == chosen


def test_shrink_after_out_of_memory_stops_growth():
    sizer = BatchSizer("auto", max_batch=64, min_seconds=0.0)
    drive(sizer, lambda b: 100.0 * b, calls=4)
    grown = sizer.next_size()
    assert grown >= 4
    sizer.shrink(grown)
    assert sizer.next_size() == grown // 2 and not sizer.tuning
    drive(sizer, lambda b: 100.0 * b, calls=5)
    assert sizer.next_size() == grown // 2


class OutOfMemoryAbove(WrappedTeacher):
    """Raises CUDA OOM for batches of more than ``limit`` structures (the GPU logic on a CPU)."""

    def __init__(self, teacher, limit: int) -> None:
        super().__init__(teacher)
        self.limit, self.calls = limit, []

    def hessians(self, batch, chunk_size=None, strategy="auto"):
        self.calls.append(batch.num_graphs)
        if batch.num_graphs > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner.hessians(batch, chunk_size, strategy)


def test_auto_and_out_of_memory_batches_give_the_one_at_a_time_hessians(tmp_path, ani_teacher):
    atoms = [rattled(n, seed=k) for k, n in enumerate(["NH3", "CH4", "CH3OH", "HCOOH"] * 3)]  # 4–6 atoms: batched
    structures = label_with(ani_teacher, atoms)
    paths = {name: tmp_path / f"{name}.h5" for name in ("one", "auto", "oom")}
    for path in paths.values():
        write_structures(path, structures)
    with HessianStore(paths["one"], "a") as store:
        precompute_teacher(store, ani_teacher, batch_size=1, progress=False)
    with HessianStore(paths["auto"], "a") as store:
        result = precompute_teacher(store, ani_teacher, batch_size="auto", max_batch=8, progress=False)
    assert result["computed"] == 12 and result["batch_size"] in (1, 2, 4, 8)
    flaky = OutOfMemoryAbove(ani_teacher, limit=2)
    with HessianStore(paths["oom"], "a") as store:
        result = precompute_teacher(store, flaky, batch_size=8, progress=False)
    assert result["computed"] == 12 and result["batch_size"] == 2
    assert flaky.calls[:3] == [8, 4, 2] and max(flaky.calls[3:]) == 2  # halved until it fit, then kept
    with HessianStore(paths["one"]) as one, HessianStore(paths["auto"]) as auto, HessianStore(paths["oom"]) as oom:
        for i in range(len(structures)):
            ref = one.hessian("ani1x", i)
            np.testing.assert_allclose(auto.hessian("ani1x", i), ref, atol=1e-5)
            np.testing.assert_allclose(oom.hessian("ani1x", i), ref, atol=1e-5)
        assert oom.teacher_done("ani1x").all()
