"""Memory estimates before a step runs: neighbour counts agree with the radius graph, the probe fit predicts the bytes
a larger structure's graph saves, and the estimated peak bounds the measured peak of a prediction and of a training
step (in fresh processes), without being vacuous."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from conftest import tiny_painn
from hessdistill.data.graph import radius_graph
from hessdistill.data.structures import Structure
from hessdistill.hessian.footprint import (
    HESSIAN_COPIES,
    MemoryEstimateError,
    check_fits,
    measure_graph_cost,
    neighbourhood,
    teacher_hessian_bytes,
)
from hessdistill.hessian.memory import SavedTensorBytes


def lattice_cluster(n: int, spacing: float = 1.6, seed: int = 0) -> Structure:
    """n carbon atoms of a jittered simple-cubic lattice (no two closer than ~1 Å), a dense cluster."""
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * spacing
    jitter = np.random.default_rng(seed).uniform(-0.2, 0.2, grid.shape)
    return Structure(z=np.full(n, 6), positions=grid + jitter, source=f"{n}-atom cluster")


def graph_degrees(structure: Structure, cutoff: float) -> np.ndarray:
    periodic = structure.pbc.any()
    edge_index, _ = radius_graph(torch.as_tensor(structure.positions), cutoff,
                                 cell=torch.as_tensor(structure.cell) if periodic else None,
                                 pbc=torch.as_tensor(structure.pbc) if periodic else None)
    return torch.bincount(edge_index[1], minlength=structure.n_atoms).numpy()


def test_neighbourhood_counts_what_the_radius_graph_lists():
    molecule = lattice_cluster(200)
    degree = graph_degrees(molecule, 4.0)
    size = neighbourhood(molecule, 4.0)
    assert (size.atoms, size.edges, size.triplets) == (200, degree.sum(), (degree * (degree - 1)).sum())
    assert neighbourhood(molecule, 4.0, max_neighbors=6).edges == np.minimum(degree, 6).sum()
    cell = Structure.from_atoms(bulk("Si", "diamond", a=5.43, cubic=True).repeat(2))  # images within 6 Å
    estimate = neighbourhood(cell, 6.0).edges
    assert 0.8 * graph_degrees(cell, 6.0).sum() < estimate < 1.25 * graph_degrees(cell, 6.0).sum()


@pytest.mark.parametrize("student", ["painn", "gemnet_dt"])
def test_the_probe_fit_predicts_the_bytes_a_larger_structure_saves(student):
    """Fitted on 8-atom probes, the per-atom/edge/triplet costs give the bytes saved on 150 atoms within 15 % (GemNet:
    triplets, ~Σ d² angles, included)."""
    from models.test_students import build

    model = tiny_painn("conservative", torch.float32) if student == "painn" else build(student, "direct").float()
    cost = measure_graph_cost(model.energy_forces, model, model.cutoff, 6, torch.float32, torch.device("cpu"))
    structure = lattice_cluster(150)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with SavedTensorBytes() as graph:
        model.energy_forces(Batch.from_data_list([structure.to_data(torch.float32)]))
    estimate = cost.peak(neighbourhood(structure, model.cutoff), factor=1.0)
    assert estimate == pytest.approx(graph.bytes_besides(weights), rel=0.15)


MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from torch_geometric.data import Batch
    from conftest import tiny_painn
    from hessian.test_footprint import lattice_cluster
    from hessdistill.hessian.footprint import PREDICTION_PEAK, TRAINING_PEAK, measure_graph_cost, neighbourhood
    from hessdistill.training.memory_check import with_rows
    from hessdistill.training.predictions import predict

    torch.set_num_threads(1)
    student, training = tiny_painn("conservative", torch.float32), {training}
    if training:
        def step(batch):
            return predict(student, batch, {{"energy", "forces", "force_jacobian_rows"}}, create_graph=True,
                           strategy="vmap")
    else:
        step = student.energy_forces
    cost = measure_graph_cost(step, student, student.cutoff, 6, torch.float32, torch.device("cpu"), with_rows(4))
    structure = lattice_cluster({atoms})
    batch = with_rows(4)(Batch.from_data_list([structure.to_data(torch.float32)]))
    student.ensure_graph(batch)

    def peak_rss():  # this process's own high-water mark
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    before = peak_rss()
    out = step(batch)
    if training:
        (out["energy"].sum() + out["forces"].square().sum() + out["force_jacobian_rows"].square().sum()).backward()
    growth = peak_rss() - before
    estimate = cost.peak(neighbourhood(structure, student.cutoff), TRAINING_PEAK if training else PREDICTION_PEAK)
    print(json.dumps({{"estimate": estimate, "growth": growth}}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
@pytest.mark.parametrize("training, atoms", [(False, 500), (True, 200)])
def test_the_estimated_peak_bounds_the_measured_one(training, atoms):
    """A prediction, and a training step of a conservative student with 4 rows by vmap (the most memory per saved
    byte measured), in a fresh process: the peak RSS grows by less than the estimate, and by more than a fifth of
    it."""
    script = MEASURE.format(tests=str(Path(__file__).parents[1]), training=training, atoms=atoms)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.2 * measured["estimate"] < measured["growth"] <= measured["estimate"], measured


def test_teacher_hessian_bytes_are_the_dense_copies():
    assert teacher_hessian_bytes(20_000) == HESSIAN_COPIES * 8 * 60_000**2  # 115 GB
    assert teacher_hessian_bytes(20_000, rows=8) == HESSIAN_COPIES * 8 * 8 * 60_000


def test_check_fits_refuses_beyond_what_is_available_and_warns_above_the_threshold(monkeypatch, caplog):
    monkeypatch.setattr("hessdistill.hessian.footprint.free_memory", lambda device: 2**30)
    with pytest.raises(MemoryEstimateError, match=r"^work needs about 2 GiB of cpu memory at its peak, more than the 1 "
                                                  r"GiB available: lower x, or memory_check=false to run it anyway$"):
        check_fits(2 * 2**30, "cpu", "work", "lower x", warn_gib=0.5)
    check_fits(0.75 * 2**30, "cpu", "work", "lower x", warn_gib=0.5)
    assert "work needs about 0.75 GiB of cpu memory" in caplog.text and "lower x to need less" in caplog.text
    caplog.clear()
    check_fits(0.25 * 2**30, "cpu", "work", "lower x", warn_gib=0.5)
    assert caplog.text == ""
