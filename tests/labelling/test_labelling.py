"""Labelling: DFT forces are −∇E, teacher MD is reproducible, and the CLI resumes without duplicates."""

import numpy as np
import pytest
from ase.build import molecule

from hessdistill.labelling.append_log import read_complete

pyscf = pytest.importorskip("pyscf")


def test_dft_forces_are_minus_energy_gradient():
    from hessdistill.labelling.pyscf_dft import dft_energy_forces

    atoms = molecule("H2O")
    energy, forces = dft_energy_forces(atoms, xc="lda,vwn", basis="sto-3g")
    delta = 1e-3
    for atom, axis in [(0, 2), (1, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += delta
        minus.positions[atom, axis] -= delta
        fd = -(dft_energy_forces(plus, "lda,vwn", "sto-3g")[0]
               - dft_energy_forces(minus, "lda,vwn", "sto-3g")[0]) / (2 * delta)
        assert forces[atom, axis] == pytest.approx(fd, abs=2e-3)
    assert energy < -2000  # eV: water's total energy is about −75 Ha


def test_langevin_snapshots_reproducible_and_moving():
    from hessdistill.integrations.ase_calculator import TorchCalculator
    from hessdistill.labelling.md_sampling import langevin_snapshots
    from hessdistill.teachers.ani import ANITeacher

    calc = TorchCalculator(ANITeacher())
    a = langevin_snapshots(molecule("CH4"), calc, 2, seed=3, n_equilibrate=5, interval=5)
    b = langevin_snapshots(molecule("CH4"), calc, 2, seed=3, n_equilibrate=5, interval=5)
    c = langevin_snapshots(molecule("CH4"), calc, 2, seed=4, n_equilibrate=5, interval=5)
    assert len(a) == 2
    np.testing.assert_allclose(a[1].positions, b[1].positions)
    assert np.abs(a[1].positions - c[1].positions).max() > 1e-4
    assert np.abs(a[0].positions - a[1].positions).max() > 1e-4


def test_label_cli_resumes(tmp_path):
    from hessdistill.cli.entry import run

    def main(argv):  # the flags of earlier versions, as aliases of key=value
        run("label", argv)

    out = tmp_path / "labels.extxyz"
    args = ["--molecules", "CH4", "--seeds", "1", "2", "--snapshots", "2", "--equilibrate", "5", "--interval", "5",
            "--xc", "lda,vwn", "--basis", "sto-3g", "--out", str(out)]
    main(args[:4] + args[5:])  # seed 1 only
    assert len(read_complete(out)) == 2
    main(args)  # seeds 1 and 2: only seed 2 is new
    frames = read_complete(out)
    keys = [(f.info["molecule"], f.info["seed"], f.info["frame"]) for f in frames]
    assert sorted(keys) == [("CH4", 1, 0), ("CH4", 1, 1), ("CH4", 2, 0), ("CH4", 2, 1)]
    assert all(np.isfinite(f.get_forces()).all() for f in frames)


def test_xtb_forces_are_minus_energy_gradient():
    pytest.importorskip("tblite")
    from hessdistill.labelling.xtb import xtb_energy_forces

    atoms = molecule("CH3Cl")
    atoms.rattle(0.05, seed=1)
    energy, forces = xtb_energy_forces(atoms)
    delta = 1e-4
    for atom, axis in [(0, 2), (1, 0), (4, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += delta
        minus.positions[atom, axis] -= delta
        fd = -(xtb_energy_forces(plus)[0] - xtb_energy_forces(minus)[0]) / (2 * delta)
        assert forces[atom, axis] == pytest.approx(fd, abs=1e-4)
    assert -300 < energy < -150  # eV: GFN2-xTB total energy of CH3Cl is about -8.2 Eh


def test_label_cli_given_structures_with_xtb_resumes_and_writes_a_store(tmp_path):
    pytest.importorskip("tblite")
    import ase.io

    from hessdistill.cli.entry import run
    from hessdistill.data.store import HessianStore
    from hessdistill.labelling.xtb import xtb_energy_forces

    frames = []
    for k, name in enumerate(["H2O", "CH4", "CH3Cl"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        atoms.info["molecule"] = name
        frames.append(atoms)
    given = tmp_path / "given.xyz"
    ase.io.write(given, frames[:2])
    out, store = tmp_path / "labels.extxyz", tmp_path / "s.h5"
    run("label", [f"structures={given}", "method=xtb", f"out={out}"])
    assert [f.info["molecule"] for f in read_complete(out)] == ["H2O", "CH4"]
    ase.io.write(given, frames)  # one more structure: only it is labelled on the rerun
    run("label", [f"structures={given}", "method=xtb", f"out={out}", f"store={store}"])
    labelled = read_complete(out)
    assert [(f.info["molecule"], f.info["frame"]) for f in labelled] == [("H2O", 0), ("CH4", 1), ("CH3Cl", 2)]
    assert all(f.info["method"] == "GFN2-xTB" for f in labelled)
    with HessianStore(store) as s:
        assert len(s) == 3
        third = s.structure(2)
        np.testing.assert_allclose(third.positions, frames[2].positions, atol=1e-7)  # extxyz keeps 8 decimals
        energy, forces = xtb_energy_forces(ase.io.read(given, index=2))  # labelled as written to the file
        assert third.energy == pytest.approx(energy) and np.allclose(third.forces, forces)
