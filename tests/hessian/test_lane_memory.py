"""Memory-budget chunking of full-Hessian VJP lanes: the saved-bytes estimate, the chunk sizes it gives, the
Hessians (unchanged by chunking), the estimate against measured memory, and out-of-memory retries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import WrappedTeacher, label_with, make_batch, rattled
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.hessian.full import batched_hessians
from hessdistill.hessian.memory import (
    LANE_BYTES_FACTOR,
    LaneChunker,
    LanesOutOfMemoryError,
    MemoryBudget,
    SavedTensorBytes,
    free_memory,
)
from hessdistill.teacher_step.run import precompute_teacher

MOLECULES = ("CH3CH2OH", "C6H6", "CH4", "CH3COOH")


def test_saved_bytes_count_each_storage_once():
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    with SavedTensorBytes() as graph:
        (x * x).exp().sum()  # mul saves x twice (one storage), exp saves its output
    assert graph.nbytes == 2 * 1000 * 8
    with SavedTensorBytes() as graph:
        x.detach().exp()  # nothing requires grad: nothing saved
    assert graph.nbytes == 0


def test_chunker_fits_the_budget_and_never_goes_below_one_lane():
    chunker = LaneChunker(budget_bytes=10_000, bytes_per_lane=3_000, device=torch.device("cpu"))
    assert [chunker.size(r) for r in (20, 11, 2)] == [3, 3, 2]
    assert LaneChunker(100, 3_000, "cpu").size(20) == 1
    assert chunker.sizes == [3, 3, 2]


def test_chunker_resizes_from_measured_cuda_peaks(monkeypatch):
    """The CUDA branch of ``measure`` on a CPU, with torch.cuda's memory counters faked: a chunk of L lanes peaks at
    300·L bytes above its start, so after the first (estimated) chunk the chunker sizes from 1.1 × 300 per lane."""
    state = {"lanes": 0}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1000 + 300 * state["lanes"])
    chunker = LaneChunker(budget_bytes=3400, bytes_per_lane=1000, device=torch.device("cuda"))
    for _ in range(3):
        lanes = chunker.size(100)
        with chunker.measure(lanes):
            state["lanes"] = lanes
    assert chunker.sizes == [3, 10, 10] and chunker.peaks == [900, 3000, 3000]
    assert chunker.bytes_per_lane == pytest.approx(330)


def test_memory_budget():
    assert MemoryBudget(gib=2).bytes("cpu") == 2 * 2**30
    assert MemoryBudget(gib=2).halved() == MemoryBudget(gib=1)
    assert MemoryBudget(fraction=0.5).halved() == MemoryBudget(fraction=0.25)
    assert 0 < MemoryBudget(fraction=0.5).bytes("cpu") <= free_memory("cpu")
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(gib=0)
    with pytest.raises(ValueError, match="fraction"):
        MemoryBudget(fraction=1.5)


def graph_bytes(teacher, batch) -> int:
    """Bytes saved by the teacher's energy + create_graph force pass on ``batch``."""
    b = teacher._prepare(batch)
    with torch.enable_grad(), SavedTensorBytes() as graph:
        energy = teacher.energy(b)
        torch.autograd.grad(energy.sum(), b.pos, create_graph=True)
    return graph.nbytes


def test_budgeted_hessians_are_chunked_as_estimated_and_unchanged(ani_teacher):
    batch = make_batch([rattled(n, seed=k) for k, n in enumerate(MOLECULES)])
    whole = ani_teacher.hessians(batch)
    assert whole.chunk_sizes is None
    per_lane = LANE_BYTES_FACTOR * graph_bytes(ani_teacher, batch)
    chunked = ani_teacher.hessians(batch, MemoryBudget(gib=3.5 * per_lane / 2**30))
    width = 3 * int((batch.ptr[1:] - batch.ptr[:-1]).max())
    sizes = chunked.chunk_sizes
    assert sizes == [3] * (width // 3) + ([width % 3] if width % 3 else []) and sum(sizes) == width
    for a, b in zip(whole.hessians, chunked.hessians):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert ani_teacher.hessians(batch, MemoryBudget(gib=1000)).chunk_sizes == [width]


def test_batched_hessians_take_a_chunker(ani_teacher):
    batch = ani_teacher._prepare(make_batch([rattled("CH3OH", 1), rattled("H2O", 2)]))
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(ani_teacher.energy(batch).sum(), batch.pos, create_graph=True)
        whole = batched_hessians(-grad, batch.pos, batch.ptr)
        chunker = LaneChunker(budget_bytes=5, bytes_per_lane=1, device="cpu")
        chunked = batched_hessians(-grad, batch.pos, batch.ptr, chunker)
    assert chunker.sizes == [5, 5, 5, 3]  # 18 rows of CH3OH
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from conftest import make_batch, rattled
    from hessdistill.hessian.full import batched_hessians
    from hessdistill.hessian.memory import SavedTensorBytes
    from hessdistill.teachers.ani import ANITeacher

    torch.set_num_threads(1)
    teacher = ANITeacher("ani1x").freeze()
    names = {molecules!r} * 4
    batch = teacher._prepare(make_batch([rattled(n, seed=k) for k, n in enumerate(names)], teacher.dtype))
    with torch.enable_grad(), SavedTensorBytes() as graph:
        (grad,) = torch.autograd.grad(teacher.energy(batch).sum(), batch.pos, create_graph=True)

    def peak_rss():  # this process's own high-water mark (ru_maxrss would include the parent's, kept across exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    before = peak_rss()
    batched_hessians(-grad, batch.pos, batch.ptr, chunk_size={lanes})
    growth = peak_rss() - before
    print(json.dumps({{"saved": graph.nbytes, "growth": growth}}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_estimate_bounds_the_measured_memory_of_the_lanes():
    """In a fresh process (its peak RSS untouched by other tests), the 36 vmapped lanes of 16 molecules (C6H6 has
    36 rows) grow the peak by less than the estimate, and by more than a tenth of it (the estimate is not vacuous;
    measured here: 0.2–0.3 of it for ANI-1x)."""
    lanes = 36
    script = MEASURE.format(tests=str(Path(__file__).parents[1]), molecules=list(MOLECULES), lanes=lanes)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    estimate = LANE_BYTES_FACTOR * measured["saved"] * lanes
    assert 0.1 * estimate < measured["growth"] <= estimate, measured


class OutOfMemoryOverLanes(WrappedTeacher):
    """Raises CUDA OOM, as ``batched_hessians`` does, when a Hessian call ran a chunk of more than ``limit`` lanes."""

    def __init__(self, teacher, limit: int) -> None:
        super().__init__(teacher)
        self.limit, self.budgets, self.chunk_sizes = limit, [], []

    def hessians(self, batch, chunk_size=None, strategy="auto"):
        self.budgets.append(chunk_size)
        out = self.inner.hessians(batch, chunk_size, strategy)
        self.chunk_sizes = out.chunk_sizes
        if max(out.chunk_sizes) > self.limit:
            raise LanesOutOfMemoryError(max(out.chunk_sizes), "CUDA out of memory (simulated)")
        return out


def test_out_of_memory_halves_the_budget_until_the_chunks_fit(tmp_path, ani_teacher):
    structures = label_with(ani_teacher, [rattled(n, seed=k) for k, n in enumerate(MOLECULES)])
    write_structures(tmp_path / "s.h5", structures)
    flaky = OutOfMemoryOverLanes(ani_teacher, limit=4)
    with HessianStore(tmp_path / "s.h5", "a") as store:
        result = precompute_teacher(store, flaky, batch_size=1, chunk_size="auto", memory_budget_gib=1000,
                                    progress=False)
        assert result["computed"] == len(structures) and store.teacher_done("ani1x").all()
        assert max(flaky.chunk_sizes) <= 4
        gib = [b.gib for b in flaky.budgets]
        assert gib[0] == 1000 and gib[1] == 500 and min(gib) == gib[-1] < 1000  # halved, then kept
        for i, s in enumerate(structures):
            (exact,) = ani_teacher.hessians(make_batch([s.to_atoms()])).hessians
            np.testing.assert_allclose(store.hessian("ani1x", i), exact.numpy(), atol=1e-5)


def test_out_of_memory_at_one_lane_is_raised(tmp_path, ani_teacher):
    structures = label_with(ani_teacher, [rattled("H2O", seed=0)])
    write_structures(tmp_path / "s.h5", structures)
    with HessianStore(tmp_path / "s.h5", "a") as store, pytest.raises(torch.cuda.OutOfMemoryError):
        precompute_teacher(store, OutOfMemoryOverLanes(ani_teacher, limit=0), batch_size=1, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_lanes_stay_within_the_budget_and_learn_their_cost():
    from hessdistill.teachers.ani import ANITeacher

    teacher = ANITeacher("ani1x").freeze().to("cuda")
    batch = make_batch([rattled(n, seed=k) for k, n in enumerate(MOLECULES * 4)], teacher.dtype)
    whole = teacher.hessians(batch).hessians
    b = teacher._prepare(batch)
    with torch.enable_grad():
        with SavedTensorBytes() as graph:
            (grad,) = torch.autograd.grad(teacher.energy(b).sum(), b.pos, create_graph=True)
        per_lane = LANE_BYTES_FACTOR * graph.nbytes
        chunker = LaneChunker(8.5 * per_lane, per_lane, "cuda")
        chunked = batched_hessians(-grad, b.pos, b.ptr, chunker)
    # estimated first, then sized from each chunk's measured peak, which never exceeds the budget
    assert chunker.sizes[0] == 8 and sum(chunker.sizes) == 3 * 12 and len(chunker.peaks) == len(chunker.sizes)
    assert max(chunker.peaks) <= chunker.budget_bytes, (chunker.peaks, chunker.budget_bytes, chunker.sizes)
    for a, c in zip(whole, chunked):
        torch.testing.assert_close(a, c.to(a), atol=1e-10, rtol=0)
