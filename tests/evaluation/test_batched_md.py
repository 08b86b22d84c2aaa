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
    nvt = batched_md.nvt_stability(atoms, model, replicas=4, steps=30, timestep_fs=0.5, record_every=10)
    assert len(nvt) == 4 and all(run["time_to_failure_ps"] is None for run in nvt)  # 15 fs near equilibrium
    assert nvt[0]["simulated_ps"] == 0.015 and nvt[0]["times_ps"] == [0.005, 0.01, 0.015]
    assert 0 < max(nvt[0]["max_bond_deviation_A"]) < 0.5
    # an impossible criterion: every replica fails at its first step, and the run stops there
    failing = batched_md.nvt_stability(atoms, model, replicas=3, steps=30, timestep_fs=0.5, max_deviation=0.0)
    assert [run["time_to_failure_ps"] for run in failing] == [0.0005] * 3
    assert [run["simulated_ps"] for run in failing] == [0.0005] * 3
    nve = batched_md.nve_drift(atoms, model, replicas=3, steps=20, timestep_fs=0.25, record_every=5)
    assert len(nve) == 3 and all(len(run["total_energy_eV_per_atom"]) == len(run["times_ps"]) == 5 for run in nve)
    assert max(abs(run["drift_eV_per_atom_per_ps"]) for run in nve) < 0.05  # a conservative student, short steps


def test_md_report_has_the_ase_reports_layout():
    from hessdistill.cli.evaluate import md_summary

    model, atoms = student(), rattled("H2O", seed=7, stdev=0.02)
    report = batched_md.md_report([atoms, rattled("NH3", seed=1, stdev=0.02)], {"student": model}, [], steps=4,
                                  nve_steps=20, replicas=2, timestep_fs=0.5)
    assert len(report["student"]["nvt"]) == len(report["student"]["nve"]) == 4  # 2 structures × 2 replicas
    (row,) = md_summary(report)
    assert row["nvt_runs"] == 4 and row["stable_runs"] == 4 and row["simulated_ps"] == 0.002


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
    steps_per_s[64] = 10.0  # 640 steps·replicas/s: past the doubling's stop, but the best measured
    assert batched_md.md_throughput(None, None, batch=64, timestep_fs=0.5)["best_replicas"] == 64


def test_evaluate_md_engine_torch_sim_reports_replicas_and_md_throughput(ani_teacher, tmp_path):
    from omegaconf import OmegaConf

    from hessdistill.cli.evaluate import batched_md_sections, write_outputs

    md_cfg = OmegaConf.create({"steps": 4, "nve_steps": 10, "replicas": 2, "temperature_K": 300.0, "timestep_fs": 0.5,
                               "friction_per_fs": 0.01, "max_deviation": 0.5, "batch": 4, "max_replicas": 2,
                               "throughput_steps": 2})
    atoms = rattled("CH4", seed=1, stdev=0.02)
    md, speed = batched_md_sections(md_cfg, [atoms], {"student": student(), "teacher": ani_teacher}, [])
    assert len(md["teacher"]["nvt"]) == 2 and len(md["student"]["nve"]) == 2
    assert speed["student"]["batch"] == 4 and speed["teacher"]["best_replicas"] in (1, 2, 4)
    assert speed["speedup_per_trajectory_ns_per_day"] == pytest.approx(
        speed["student"]["per_trajectory_ns_per_day"] / speed["teacher"]["per_trajectory_ns_per_day"])
    write_outputs(tmp_path, {"checkpoint": "c.ckpt", "store": "s.h5", "split": "test", "teacher": "ani1x",
                             "accuracy": {"force_mae": 1.0}, "md_speed": speed})
    report = (tmp_path / "metrics.md").read_text()
    assert "## MD throughput (torch-sim, replicas of one structure)" in report
    assert f"{speed['speedup_per_trajectory_ns_per_day']:.2f}x at 4 replicas" in report
    assert "md_speed/student/best_total_ns_per_day" in (tmp_path / "metrics.csv").read_text()
