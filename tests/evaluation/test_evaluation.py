"""The evaluation suite on cases with known answers (a harmonic spring's frequency, ASE's finite-difference
vibrations, numerical stress, ns/day), and ``hessdistill-evaluate`` end to end on a tiny trained checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from hydra import compose, initialize_config_dir

from conftest import rattled, tiny_painn
from hessdistill.config import CONFIG_DIR
from hessdistill.evaluation import speed
from hessdistill.evaluation.relax import judge, relax
from hessdistill.evaluation.vibrations import _TO_WAVENUMBER, harmonic_frequencies
from hessdistill.integrations.ase_calculator import TorchCalculator, model_hessian


def test_harmonic_frequency_of_a_spring_is_sqrt_k_over_mu():
    k, masses = 36.0, np.array([1.008, 35.45])  # eV/Å², amu (an H–Cl spring)
    u = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])  # any direction
    block = k * np.outer(u, u)
    hessian = np.block([[block, -block], [-block, block]])
    (freq,) = harmonic_frequencies(hessian, masses)
    mu = masses.prod() / masses.sum()
    assert freq == pytest.approx(np.sqrt(k / mu) * _TO_WAVENUMBER, rel=1e-12)
    assert _TO_WAVENUMBER == pytest.approx(521.47, rel=1e-4)  # cm⁻¹ for k = 1 eV/Å², μ = 1 amu


def test_imaginary_modes_come_out_negative():
    k = 10.0
    block = -k * np.eye(3)[:1].T @ np.eye(3)[:1]
    hessian = np.block([[block, -block], [-block, block]])  # a maximum along x
    (freq,) = harmonic_frequencies(hessian, np.array([12.0, 12.0]))
    assert freq < 0 and abs(freq) == pytest.approx(np.sqrt(k / 6.0) * _TO_WAVENUMBER)


def test_teacher_spectrum_matches_ase_finite_difference_vibrations(ani_teacher, tmp_path, monkeypatch):
    from ase.vibrations import Vibrations

    monkeypatch.chdir(tmp_path)
    atoms, converged, _ = relax(molecule("H2O"), ani_teacher, fmax=1e-4, steps=2000)
    assert converged
    ours = harmonic_frequencies(model_hessian(ani_teacher, atoms), atoms.get_masses())
    probe = atoms.copy()
    probe.calc = TorchCalculator(ani_teacher)
    vib = Vibrations(probe, delta=1e-3, name=str(tmp_path / "vib"))
    vib.run()
    theirs = np.sort(np.real(vib.get_frequencies())[-3:])
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2.0)  # ANI's CELU: finite differences to ~0.1 %
    assert len(ours) == 3 and ours[0] < 0.7 * ours[1]  # a bend well below the two O–H stretches


def test_student_hessian_is_minus_its_force_jacobian():
    from hessdistill.hessian.finite_difference import finite_difference_force_jacobian

    model = tiny_painn("conservative")
    atoms = rattled("CH3OH", seed=3)
    h = model_hessian(model, atoms)
    probe = atoms.copy()
    probe.calc = TorchCalculator(model)

    def forces(pos):
        probe.positions = pos.numpy()
        return torch.as_tensor(probe.get_forces())

    fd = -finite_difference_force_jacobian(forces, torch.as_tensor(atoms.positions), delta=1e-5)
    np.testing.assert_allclose(h, fd.numpy(), atol=1e-6 * np.abs(h).max())


def test_student_stress_matches_numerical_stress():
    from ase.calculators.fd import calculate_numerical_stress

    atoms = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = TorchCalculator(tiny_painn("conservative"))
    stress = atoms.get_stress()
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=1e-9, rtol=1e-5)
    assert np.abs(stress).max() > 1e-4
    with pytest.raises(Exception, match="stress needs a periodic cell"):
        water = molecule("H2O")
        water.calc = TorchCalculator(tiny_painn("conservative"))
        water.get_stress()


def test_relaxation_converges_and_is_judged_by_the_teacher_or_a_reference(ani_teacher):
    from ase.calculators.emt import EMT

    from hessdistill.evaluation.relax import relaxation_report

    start = rattled("CH3OH", seed=1, stdev=0.1)
    relaxed, converged, steps = relax(start, ani_teacher, fmax=0.05)
    energy, max_force = judge(relaxed, TorchCalculator(ani_teacher))
    start_energy, start_force = judge(start, TorchCalculator(ani_teacher))
    assert converged and 0 < steps < 500 and max_force < 0.05 < start_force and energy < start_energy
    from hessdistill.data.structures import Structure

    (row,) = relaxation_report([Structure.from_atoms(start)], ani_teacher, ani_teacher, reference=EMT())
    probe = relaxed.copy()
    probe.calc = EMT()
    assert row["teacher_judged_energy_eV"] == pytest.approx(probe.get_potential_energy(), abs=1e-6)  # EMT judged


def test_ns_per_day_and_best_batch_search(monkeypatch):
    assert speed.ns_per_day(100.0) == pytest.approx(8.64)  # 100 structures/s × 1 fs × 86 400 s/day
    assert speed.ns_per_day(100.0, timestep_fs=0.5) == pytest.approx(4.32)
    rates = {64: 100.0, 128: 180.0, 256: 185.0, 512: 400.0}
    monkeypatch.setattr(speed, "structures_per_second", lambda model, s, b, repeat: rates[b])
    assert speed.best_batch(None, [], 64, 512) == (128, 180.0)  # 256 gains < 5 %: stop
    assert speed.best_batch(None, [], 64, 64) == (64, 100.0)


class Exploding(torch.nn.Module):
    """U = −k Σ|r_i − r̄|²: every atom is pushed away from the centre, so bonds break within femtoseconds."""

    def __init__(self, k: float = 50.0) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def energy_forces(self, batch):
        pos = batch.pos.double()
        centred = pos - pos.mean(0)
        return (-self.k * (centred**2).sum()).detach()[None], (2 * self.k * centred).detach()


def test_bond_metrics_on_known_geometries():
    from hessdistill.evaluation.md import bonds_of, equilibrium_lengths, max_bond_deviation

    water = molecule("H2O")
    bonds = bonds_of(water)
    assert sorted(map(tuple, bonds.tolist())) == [(0, 1), (0, 2)]  # O–H twice, no H–H bond
    eq = equilibrium_lengths(water, bonds)
    stretched = water.positions.copy()
    stretched[1] += 0.6 * (stretched[1] - stretched[0]) / np.linalg.norm(stretched[1] - stretched[0])
    assert max_bond_deviation(stretched, bonds, eq) == pytest.approx(0.6)
    a, b = water.copy(), water.copy()
    a.info["molecule"] = b.info["molecule"] = water.info["molecule"] = "H2O"
    along = (water.positions[1] - water.positions[0]) / np.linalg.norm(water.positions[1] - water.positions[0])
    a.positions[1] += 0.05 * along  # one O–H bond 0.05 Å longer, then shorter: the mean is the start
    b.positions[1] -= 0.05 * along
    np.testing.assert_allclose(equilibrium_lengths(water, bonds, [a, b, molecule("CH4")]), eq, atol=1e-12)


def test_energy_drift_is_the_fitted_slope():
    from hessdistill.evaluation.md import energy_drift

    t = np.linspace(0, 2.0, 50)
    noise = 1e-6 * np.sin(37 * t)
    assert energy_drift(t, -3.0 + 0.004 * t + noise) == pytest.approx(0.004, rel=1e-3)


def test_nvt_stability_flags_breaking_bonds_and_keeps_a_good_model_stable(ani_teacher):
    from hessdistill.evaluation.md import nve_drift, nvt_stability

    water = molecule("H2O")
    broken = nvt_stability(water, Exploding(), steps=500, record_every=5)
    assert broken["time_to_failure_ps"] is not None and broken["time_to_failure_ps"] < 0.5
    assert broken["max_bond_deviation_A"][-1] > 0.5 and broken["simulated_ps"] == broken["time_to_failure_ps"]
    stable = nvt_stability(water, ani_teacher, steps=100, record_every=10)
    assert stable["time_to_failure_ps"] is None and stable["simulated_ps"] == pytest.approx(0.1)
    assert len(stable["times_ps"]) == 10 and max(stable["max_bond_deviation_A"]) < 0.3
    nve = nve_drift(water, ani_teacher, steps=200, timestep_fs=0.25, record_every=10)
    assert len(nve["total_energy_eV_per_atom"]) == 21
    assert abs(nve["drift_eV_per_atom_per_ps"]) < 0.05  # a conservative model with a small step conserves energy


def test_evaluate_command_on_a_tiny_trained_checkpoint(labelled_store, tmp_path, monkeypatch):
    from hessdistill.cli.evaluate import run as evaluate
    from hessdistill.cli.train import run as train

    monkeypatch.chdir(tmp_path)
    tiny = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
    subset = [f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        train_cfg = compose("train", overrides=["experiment=demo", "trainer.max_epochs=3", "subset.batch_size=4",
                                                f"logger.0.save_dir={tmp_path / 'logs'}",
                                                *subset, *tiny])
        trained = train(train_cfg, str(tmp_path / "run"))
        cfg = compose("evaluate", overrides=[f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", *subset,
                                             "speed.batch_size=4", "speed.max_batch=8", "speed.repeat=1",
                                             "speed.structures=4", "relax.count=1", "spectra.count=1",
                                             "md.count=1", "md.steps=30", "md.nve_steps=30",
                                             "spectra.fmax=0.01", "md.enabled=true", "relax.enabled=true",
                                             "spectra.enabled=true"])   # opt-in sections (minutes by default)
    result = evaluate(cfg, str(tmp_path / "eval"))
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == ["md.png", "metrics.csv", "metrics.json", "metrics.md",
                                                     "parity.png", "spectra.png"]
    student_md, teacher_md = result["md_summary"]
    assert student_md["model"] == "student" and teacher_md["nvt_runs"] == 1 and teacher_md["stable_runs"] == 1
    assert teacher_md["nve_drift_eV_per_atom_per_ps"] is not None
    acc = result["accuracy"]
    assert acc["structures"] == 4
    # the one metric set: the same EMA weights on the same split and rows give every test metric of the training run
    assert {f"test/{k}" for k in acc} - {"test/structures", "test/hessian_rows_per_structure"} == set(trained["test"])
    for key, value in trained["test"].items():
        assert acc[key.removeprefix("test/")] == pytest.approx(value, rel=1e-4, abs=1e-9), key
    assert acc["teacher_force_mae"] == pytest.approx(0.0, abs=1e-6)  # the store was labelled by ANI-1x
    assert acc["hessian_mae"] > 0 and acc["hessian_rows_per_structure"] == 4
    assert result["speed"]["student"]["structures_per_s"] > 0 and result["speed"]["speedup_at_batch"] > 0
    (row,) = result["relax"]
    assert row["teacher_converged"] and row["teacher_judged_max_force_eV_per_A"] < 0.05
    (spec,) = result["spectra"]
    assert len(spec["teacher_cm1"]) == len(spec["student_cm1"]) == 3 * len(molecule(spec["name"])) - 6
    assert spec["mae_cm1"] == pytest.approx(np.abs(np.subtract(spec["student_cm1"], spec["teacher_cm1"])).mean())
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == acc
    report = re.sub(" +", " ", (out / "metrics.md").read_text())  # columns are padded
    assert all(f"## {part}" in report for part in ("Accuracy", "Speed", "MD", "FIRE", "Harmonic spectra"))
    assert "None" not in report
    for header in ("| structures | energy MAE (meV/atom) | force MAE (meV/Å) |", "structures/s", "ns/day",
                   "student judged energy (eV)", "student judged max force (eV/Å)", "mean time to failure (ps)",
                   "nve drift (eV/atom/ps)", "wavenumber MAE (cm⁻¹)"):
        assert header in report, header


def test_metrics_md_headers_carry_units_and_missing_values_show_as_a_dash(tmp_path):
    from hessdistill.cli.evaluate import write_outputs

    md_row = {"model": "student", "nvt_runs": 2, "stable_runs": 2, "simulated_ps": 1.0,
              "mean_time_to_failure_ps": None, "nve_drift_eV_per_atom_per_ps": None}
    write_outputs(tmp_path, {"checkpoint": "c.ckpt", "store": "s.h5", "split": "test", "teacher": "ani1x",
                             "accuracy": {"structures": 4, "energy_mae": 1.5, "force_mae": 20.0, "hessian_mae": 0.3,
                                          "loss_ef": 0.01, "teacher_force_mae": 2.0, "hessian_rows_per_structure": 4},
                             "md_summary": [md_row], "spectra": [{"name": "CH4", "mae_cm1": 12.0}]})
    report = re.sub(" +", " ", (tmp_path / "metrics.md").read_text())  # columns are padded
    assert "| structures | energy MAE (meV/atom) | force MAE (meV/Å) | Hessian-row MAE (eV/Å²) | L_EF (eV²) | " \
           "teacher force MAE (meV/Å) | Hessian rows per structure |" in report
    assert "| model | NVT runs | stable runs | simulated (ps) | mean time to failure (ps) | nve drift (eV/atom/ps) |" \
           in report
    assert "| student | 2 | 2 | 1 | — | — |" in report and "None" not in report
    assert "| structure | wavenumber MAE (cm⁻¹) |" in report


def test_checkpoints_that_name_code_outside_the_package_are_refused(tmp_path):
    from hessdistill.evaluation.checkpoint import CheckpointError, load_student

    victim = tmp_path / "written-by-checkpoint"
    hostile = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    nested = {"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": hostile}
    for k, student in enumerate([hostile, nested]):
        path = tmp_path / f"hostile{k}.ckpt"
        torch.save({"hyper_parameters": {"student": student, "plugins": []}, "state_dict": {}}, path)
        refused = "refusing to build the student 'builtins.open'" if k == 0 else \
            r"student painn kwargs.hidden_channels: has the key '_target_'"
        with pytest.raises(CheckpointError, match=rf"hostile{k}.ckpt: {refused}"):
            load_student(path)
    plugin = tmp_path / "plugin.ckpt"
    torch.save({"hyper_parameters": {"student": {"_target_": "hessdistill.models.painn.PaiNN"}, "plugins": [hostile]},
                "state_dict": {}}, plugin)
    with pytest.raises(CheckpointError, match="plugin.ckpt: refusing to build the plugin 'builtins.open'"):
        load_student(plugin)
    assert not victim.exists()
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a hessdistill training checkpoint"):
        load_student(garbage)
