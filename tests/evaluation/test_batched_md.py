"""Batched MD through torch-sim against the ASE reference path: the same velocity-Verlet trajectory from both
engines, replicas that are independent, NVT stability and NVE drift of replicas, teachers through the same adapter,
and the throughput report's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.md.verlet import VelocityVerlet

from conftest import make_batch, rattled, tiny_painn
from hessdistill.evaluation import batched_md
from hessdistill.evaluation.speed import ns_per_day
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.integrations.torchsim import TorchSimModel


def student():
    model = tiny_painn("conservative")
    model.set_energy_statistics(torch.linspace(-5.0, -1.0, 119, dtype=torch.float64), 0.5)
    return model


def test_ase_and_torch_sim_give_the_same_trajectory():
    model, atoms = student(), rattled("CH3OH", seed=7, stdev=0.1)
    momenta = batched_md.initial_momenta(atoms, 1, 600.0, seed=3)
    reference = atoms.copy()
    reference.set_momenta(momenta)
    reference.calc = TorchCalculator(model)
    sim = TorchSimModel(model)
    state = batched_md.md_state(sim, batched_md.replica_state(atoms, 1, sim.device), momenta)
    dt = 0.5  # fs
    from torch_sim.integrators.md import velocity_verlet

    dynamics = VelocityVerlet(reference, timestep=dt * units.fs)
    for _ in range(6):  # 300 steps, compared every 50
        dynamics.run(50)
        for _ in range(50):
            state = velocity_verlet(state, torch.tensor(dt * batched_md.FS, dtype=torch.float64), sim)
        np.testing.assert_allclose(state.positions.numpy(), reference.positions, atol=1e-8)
        np.testing.assert_allclose(state.momenta.numpy(), reference.get_momenta(), atol=1e-8)
        assert float(state.energy[0]) == pytest.approx(reference.get_potential_energy(), abs=1e-9)
    assert np.abs(reference.positions - atoms.positions).max() > 0.05  # the molecule really moved


def test_replicas_are_independent_trajectories():
    model, atoms = student(), rattled("H2O", seed=2, stdev=0.1)
    sim = TorchSimModel(model)
    momenta = batched_md.initial_momenta(atoms, 3, 300.0, seed=5)
    state = batched_md.md_state(sim, batched_md.replica_state(atoms, 3, sim.device), momenta)
    from torch_sim.integrators.md import velocity_verlet

    dt = torch.tensor(0.5 * batched_md.FS, dtype=torch.float64)
    for _ in range(20):
        state = velocity_verlet(state, dt, sim)
    # replica 1 alone, from its own momenta, lands where it landed among the three
    alone = batched_md.md_state(sim, batched_md.replica_state(atoms, 1, sim.device), momenta[3:6])
    for _ in range(20):
        alone = velocity_verlet(alone, dt, sim)
    np.testing.assert_allclose(alone.positions.numpy(), state.positions.numpy()[3:6], atol=1e-10)
    assert np.abs(state.positions.numpy()[:3] - state.positions.numpy()[3:6]).max() > 1e-4  # different replicas


def test_initial_momenta_have_no_centre_of_mass_motion_and_the_temperature():
    atoms = rattled("CH3OH", seed=1)
    p = batched_md.initial_momenta(atoms, 400, 300.0, seed=0).reshape(400, len(atoms), 3)
    np.testing.assert_allclose(p.sum(axis=1), 0.0, atol=1e-9)
    kinetic = (p**2 / (2 * atoms.get_masses()[None, :, None])).sum(axis=(1, 2)).mean()
    # equipartition over 3N − 3 degrees of freedom (the centre of mass removed)
    assert kinetic == pytest.approx(0.5 * (3 * len(atoms) - 3) * units.kB * 300.0, rel=0.05)


def test_nvt_stability_and_nve_drift_of_replicas():
    model, atoms = student(), rattled("CH3OH", seed=7, stdev=0.02)
    nvt = batched_md.nvt_stability(atoms, model, replicas=4, steps=30, timestep_fs=0.5, max_deviation=0.5)
    assert nvt["replicas"] == 4 and len(nvt["time_to_failure_ps"]) == 4 and nvt["simulated_ps"] == 0.015
    assert nvt["stable"] == sum(t is None for t in nvt["time_to_failure_ps"])
    # an impossible criterion: every replica fails at its first step, and the run stops there
    failing = batched_md.nvt_stability(atoms, model, replicas=3, steps=30, timestep_fs=0.5, max_deviation=0.0)
    assert failing["time_to_failure_ps"] == [0.0005] * 3 and failing["stable"] == 0
    assert failing["simulated_ps"] == 0.0005
    nve = batched_md.nve_drift(atoms, model, replicas=3, steps=20, timestep_fs=0.25, record_every=5)
    assert np.array(nve["total_energy_eV_per_atom"]).shape == (3, 5)
    assert max(abs(d) for d in nve["drift_eV_per_atom_per_ps"]) < 0.05  # a conservative student, a short step


def test_a_teacher_runs_through_the_same_adapter(ani_teacher):
    atoms = rattled("CH4", seed=1)
    state = batched_md.replica_state(atoms, 2, torch.device("cpu"))
    out = TorchSimModel(ani_teacher)(state)
    energy, forces = ani_teacher.energy_forces(make_batch([atoms, atoms], ani_teacher.dtype))
    torch.testing.assert_close(out["energy"], energy.double())
    torch.testing.assert_close(out["forces"], forces.double())


def test_throughput_report_is_per_trajectory_and_total(monkeypatch):
    steps_per_s = {1: 100.0, 2: 90.0, 4: 80.0, 8: 30.0, 64: 2.0}  # total: 100, 180, 320, 240, 128 steps·replicas/s
    monkeypatch.setattr(batched_md, "md_steps_per_second", lambda atoms, model, r, steps, dt: steps_per_s[r])
    report = batched_md.md_throughput(None, None, batch=64, timestep_fs=0.5)
    assert report["best_replicas"] == 4
    assert report["best_per_trajectory_ns_per_day"] == pytest.approx(ns_per_day(80.0, 0.5))
    assert report["best_total_ns_per_day"] == pytest.approx(4 * ns_per_day(80.0, 0.5))
    assert report["per_trajectory_ns_per_day"] == pytest.approx(ns_per_day(2.0, 0.5))
    assert report["single_trajectory_ns_per_day"] == pytest.approx(ns_per_day(100.0, 0.5))
