"""MD17/MD22/rMD17 npz reader: both key conventions, kcal/mol → eV, and errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from ase.units import kcal, mol

from hessdistill.data.sources.npz import read_npz
from hessdistill.data.structures import InvalidStructureError


def fake_frames(rng, n_frames=3, n_atoms=4):
    return (np.array([6, 1, 1, 8]), rng.normal(size=(n_frames, n_atoms, 3)) + 2 * np.arange(n_atoms)[:, None],
            rng.normal(-1e5, 10, size=(n_frames, 1)), rng.normal(size=(n_frames, n_atoms, 3)) * 30)


@pytest.mark.parametrize("keys", [("z", "R", "E", "F"), ("nuclear_charges", "coords", "energies", "forces")])
def test_both_layouts_convert_units(tmp_path, rng, keys):
    z, r, e, f = fake_frames(rng)
    path = tmp_path / "ethanol.npz"
    np.savez(path, **dict(zip(keys, (z, r, e, f))))
    structures = list(read_npz(path))
    assert len(structures) == 3
    s = structures[1]
    np.testing.assert_array_equal(s.z, z)
    np.testing.assert_allclose(s.positions, r[1])
    assert s.energy == pytest.approx(e[1, 0] * kcal / mol, rel=1e-15)
    np.testing.assert_allclose(s.forces, f[1] * kcal / mol, rtol=1e-15)
    assert s.info == {"molecule": "ethanol", "conformer": 1} and str(path) in s.source


def test_errors_name_the_file(tmp_path, rng):
    z, r, e, f = fake_frames(rng)
    bad = tmp_path / "bad.npz"
    np.savez(bad, atoms=z, R=r)
    with pytest.raises(InvalidStructureError, match=r"bad\.npz: neither MD17"):
        read_npz(bad)
    short = tmp_path / "short.npz"
    np.savez(short, z=z, R=r, E=e[:2], F=f)
    with pytest.raises(InvalidStructureError, match=r"short\.npz: E has 2 values, expected 3"):
        read_npz(short)
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, z=z, R=r)
    with pytest.raises(InvalidStructureError, match="missing 'E' or 'F'"):
        read_npz(unlabelled)
    assert next(read_npz(unlabelled, require_labels=False)).energy is None
