"""ASE-readable sources: an ASE database round trip, an extxyz file in kcal/mol, and reading frame by frame."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import kcal, mol

from conftest import shared_file
from hessdistill.data.sources.ase_files import read_ase
from hessdistill.data.structures import InvalidStructureError


def test_ase_db_round_trip(tmp_path, rng):
    from ase.db import connect

    path = tmp_path / "set.db"
    written = []
    with connect(path) as db:
        for k, name in enumerate(["H2O", "CH3OH"]):
            atoms = molecule(name)
            atoms.calc = SinglePointCalculator(atoms, energy=-10.0 * (k + 1), forces=rng.normal(size=(len(atoms), 3)))
            db.write(atoms)
            written.append(atoms)
    read = list(read_ase(path))
    assert len(read) == 2
    for s, a in zip(read, written):
        np.testing.assert_array_equal(s.z, a.numbers)
        np.testing.assert_allclose(s.positions, a.positions)
        assert s.energy == a.get_potential_energy()
        np.testing.assert_allclose(s.forces, a.get_forces())


def test_rmd17_extxyz_in_kcal_per_mol():
    path = shared_file("data/rmd17_ethanol_100_kcalmol.xyz")
    raw = list(read_ase(path))
    converted = list(read_ase(path, energy_unit=kcal / mol))
    assert len(converted) == 100 and set(converted[0].z.tolist()) == {1, 6, 8}
    assert converted[0].energy == pytest.approx(raw[0].energy * kcal / mol)
    np.testing.assert_allclose(converted[0].forces, raw[0].forces * kcal / mol)
    assert 0.01 < np.abs(converted[0].forces).mean() < 5.0  # eV/Å, a sane range for thermal ethanol


def test_extxyz_is_read_frame_by_frame(tmp_path, rng):
    frames = []
    for k, name in enumerate(["H2O", "NH3", "CH4"]):
        atoms = molecule(name)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * k, forces=rng.normal(size=(len(atoms), 3)))
        frames.append(atoms)
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames)
    with path.open("a") as f:
        f.write("4\nbroken frame\nH 0 0\n")  # a truncated fourth frame
    stream = read_ase(path)
    assert [next(stream).n_atoms for _ in range(3)] == [3, 4, 5]  # a whole-file read would fail before any
    with pytest.raises(InvalidStructureError, match=r"frames\.extxyz\[frame 3\]: line \d+ gives 4 atoms, more than the "
                                                    r"19 bytes left in the file can hold"):
        next(stream)
