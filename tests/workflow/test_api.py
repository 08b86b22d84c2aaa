"""The Python API (``import hessdistill as hd``): precompute, train, evaluate, predict and an ASE calculator of the
student — the whole notebook workflow, with the calculator's float64 energies checked against ASE's numerical
forces."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import units
from ase.calculators.fd import calculate_numerical_forces
from ase.md.verlet import VelocityVerlet

import hessdistill as hd


def displaced(atoms, step: float):
    """Copies of ``atoms`` with atom 0 moved by +step and −step Å along x."""
    out = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[0, 0] += sign * step
        out.append(moved)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A conservative PaiNN-small trained for 2 epochs on 24 demo frames, through hd.precompute and hd.train."""
    work = tmp_path_factory.mktemp("api")
    store = [f"subset.store={work / 'demo.h5'}", "+subset.source.index=':24'"]
    labelled = hd.precompute("teacher=ani1x", "subset=demo_hcno", *store)
    assert labelled["computed"] == labelled["total"] == 24
    run = hd.train(*store, "trainer.max_epochs=2", "student.hidden_channels=16", "student.num_layers=2",
                   "student.force_mode=conservative", f"logger.0.save_dir={work}", experiment="demo",
                   output_dir=work / "run")
    return work, run


def test_train_returns_its_run_and_evaluate_takes_it(trained):
    work, run = trained
    assert run["epochs"] == 2 and run["checkpoint"] == str(work / "run" / "checkpoints" / "last.ckpt")
    report = hd.evaluate(run=run["run_dir"], output_dir=work / "eval", **{"speed.enabled": False,
                         "md.enabled": False, "relax.enabled": False, "spectra.enabled": False})
    assert report["output_dir"] == str(work / "eval") and (work / "eval" / "metrics.md").is_file()
    # run= brought the run's subset, split file and checkpoint: the same numbers as its own test step
    assert report["accuracy"]["force_mae"] == pytest.approx(run["test"]["test/force_mae"], rel=1e-4)
    assert report["checkpoint"] == run["checkpoint"]
    with pytest.raises(ValueError, match="needs checkpoint=<file> or run=<training run directory>"):
        hd.evaluate(output_dir=work / "none")


def test_the_calculator_keeps_mev_resolution_and_runs_md(trained):
    work, run = trained
    calc = hd.load_calculator(run["checkpoint"], device="cpu")
    atoms = ase.io.read(hd.config.dataset_path("demo/hcno_wb97x_631gd.extxyz"), index=0)
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert abs(energy) > 1e3  # a total energy: float32 would resolve it to ~1e-4 of an eV at best
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, abs=1e-6)
    # a float32 student, but energies summed in float64: finite differences of the energy are its forces
    numerical = calculate_numerical_forces(atoms, eps=1e-3)
    assert np.abs(numerical - forces).mean() < 5e-3, np.abs(numerical - forces).mean()
    # the same differences of a float32 total (what a float32 sum gives) are noise: this check can fail
    e32 = [np.float32(calc.model.atom_energies(calc._batch(a)).float().sum()) for a in displaced(atoms, 1e-3)]
    assert abs(float(e32[0] - e32[1]) / 2e-3 + forces[0, 0]) > 10 * np.abs(numerical - forces).mean()
    hessian = calc.get_hessian(atoms)
    assert hessian.shape == (3 * len(atoms), 3 * len(atoms)) and np.allclose(hessian, hessian.T)
    # five lines of ASE MD with the student
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    start = atoms.get_total_energy()
    dynamics.run(40)
    assert abs(atoms.get_total_energy() - start) < 0.05 * abs(energy - start) + 0.05


def test_predict_writes_every_frame(trained, tmp_path):
    _, run = trained
    frames = ase.io.read(hd.config.dataset_path("demo/hcno_wb97x_631gd.extxyz"), index=":5")
    for atoms in frames:
        atoms.calc = None
    ase.io.write(tmp_path / "in.xyz", frames)
    result = hd.predict(checkpoint=run["checkpoint"], input=str(tmp_path / "in.xyz"),
                        output=str(tmp_path / "out.xyz"), batch_size=2, device="cpu")
    assert result["frames"] == 5
    predicted = ase.io.read(tmp_path / "out.xyz", index=":")
    calc = hd.load_calculator(run["checkpoint"], device="cpu")
    for atoms, reference in zip(predicted, frames):
        np.testing.assert_allclose(atoms.positions, reference.positions)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        reference.calc = calc
        assert energy == pytest.approx(reference.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(forces, reference.get_forces(), atol=1e-5)


def test_training_leaves_a_deployed_model_with_the_checkpoints_energies(trained, tmp_path, caplog):
    from hessdistill.cli.train import deploy_after_training
    from hessdistill.integrations.deploy import DeployError

    work, run = trained
    assert run["deployed"] == str(work / "run" / "deployed.pt")
    atoms = ase.io.read(hd.config.dataset_path("demo/hcno_wb97x_631gd.extxyz"), index=3)
    atoms.calc = hd.load_calculator(run["checkpoint"], device="cpu")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = hd.deployed_calculator(run["deployed"])
    # a float32 student deployed in float32: totals to float32 resolution of ~1e3 eV, forces to float32 round-off
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=2e-3)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=2e-5)
    info = hd.deploy(checkpoint=run["checkpoint"], target=str(tmp_path / "f64.pt"), dtype="float64")
    assert info["dtype"] == "float64" and info["force_mode"] == "conservative" and info["species"] == [1, 6, 7, 8]
    atoms.calc = hd.deployed_calculator(info["path"])
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-4)  # float64 totals of a float32 student
    with pytest.raises(DeployError, match="dtype must be float32 or float64, got 'float16'"):
        hd.deploy(checkpoint=run["checkpoint"], target=str(tmp_path / "f16.pt"), dtype="float16")
    # a deployment that fails after training is a warning, not a crashed run
    assert deploy_after_training(str(tmp_path / "missing.ckpt"), None) is None
    assert "could not deploy" in caplog.text and "checkpoint not found" in caplog.text


def test_demo_help_prints_its_own_help_and_runs_nothing(monkeypatch, capsys):
    from hessdistill.cli import demo

    monkeypatch.setattr(demo, "_run", lambda *a: pytest.fail(f"--help ran {a}"))
    with pytest.raises(SystemExit) as stop:
        demo.main(["--help"])
    assert stop.value.code == 0
    assert "hessdistill-demo" in capsys.readouterr().out
