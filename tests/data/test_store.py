"""HessianStore: structure and teacher round trips, completion marks, and errors that name file and index."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from ase.build import bulk, molecule

from hessdistill.data.sources.ase_files import read_ase
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import InvalidStructureError, Structure


def make_structures(rng) -> list[Structure]:
    """Two molecules and one periodic crystal with random labels and some metadata."""
    out = []
    for k, atoms in enumerate([molecule("H2O"), molecule("CH3OH"), bulk("Si", "diamond", a=5.43, cubic=True)]):
        atoms.rattle(0.05, seed=k)
        out.append(Structure.from_atoms(atoms, source=f"made[{k}]"))
        out[-1].energy = float(rng.normal(-100.0, 10.0))
        out[-1].forces = rng.normal(size=(len(atoms), 3))
        out[-1].info = {"molecule": atoms.get_chemical_formula(), "seed": k, "temperature": 300.0 + k}
    return out


def random_symmetric(rng, n: int) -> np.ndarray:
    a = rng.normal(size=(3 * n, 3 * n)) * 10.0
    return a + a.T


def random_matrix(rng, n: int) -> np.ndarray:
    """Not symmetric, so a store that mixed up rows and columns would be caught."""
    return rng.normal(size=(3 * n, 3 * n)) * 10.0


@pytest.fixture
def store_path(tmp_path, rng):
    path = tmp_path / "store.h5"
    structures = make_structures(rng)
    write_structures(path, structures)
    return path, structures


def test_structures_round_trip(store_path):
    path, structures = store_path
    store = HessianStore(path)
    assert len(store) == len(structures)
    assert store.n_atoms().tolist() == [s.n_atoms for s in structures]
    for i, ref in enumerate(structures):
        got = store.structure(i)
        assert got.n_atoms == store.n_atoms(i) == ref.n_atoms
        np.testing.assert_array_equal(got.z, ref.z)
        np.testing.assert_array_equal(got.positions, ref.positions)
        np.testing.assert_array_equal(got.cell, ref.cell)
        np.testing.assert_array_equal(got.pbc, ref.pbc)
        assert got.energy == ref.energy
        np.testing.assert_array_equal(got.forces, ref.forces)
        assert got.info == {**ref.info, "source": ref.source}
        assert got.source == f"{path}[{i}]"
    assert store.structure(2).pbc.all() and abs(np.linalg.det(store.structure(2).cell)) > 100.0
    assert not store.structure(0).pbc.any()
    assert [s.n_atoms for s in store.structures([2, 0])] == [structures[2].n_atoms, structures[0].n_atoms]
    store.close()


def test_write_structures_refuses_to_overwrite(store_path, rng):
    path, structures = store_path
    with pytest.raises(FileExistsError, match=re.escape(str(path))):
        write_structures(path, structures[:1])
    write_structures(path, structures[:1], overwrite=True)
    assert len(HessianStore(path)) == 1


def test_teacher_round_trip_and_done_marks(store_path, rng):
    path, structures = store_path
    store = HessianStore(path, mode="a")
    assert store.teachers() == []
    assert not store.teacher_done("t").any()
    store.create_teacher("t", {"teacher": "t", "level_of_theory": "toy", "skipped": None})
    assert store.teachers() == ["t"]
    assert store.teacher_done("t").tolist() == [False, False, False]

    labels = {}
    for i in (2, 0):  # out of order, and structure 1 left undone
        n = store.n_atoms(i)
        labels[i] = (float(rng.normal()), rng.normal(size=(n, 3)), random_matrix(rng, n))
        store.write_teacher("t", i, *labels[i])
    assert store.teacher_done("t").tolist() == [True, False, True]
    with pytest.raises(StoreError, match=re.escape(f"{path}[1]") + ".*not computed"):
        store.hessian_rows("t", 1, np.array([0]))

    # resuming reopens the group without clearing what is done
    store.create_teacher("t", {"teacher": "t"})
    assert store.teacher_done("t").tolist() == [True, False, True]
    store.close()

    store = HessianStore(path)  # read back from disk
    assert store.file["teachers/t"].attrs["level_of_theory"] == "toy"
    assert "skipped" not in store.file["teachers/t"].attrs
    for i, (energy, forces, hessian) in labels.items():
        got_e, got_f = store.teacher_labels("t", i)
        assert got_e == energy
        np.testing.assert_array_equal(got_f, forces)
        full = store.hessian("t", i)
        assert full.shape == hessian.shape
        np.testing.assert_allclose(full, hessian, rtol=1e-6, atol=1e-6)  # stored as float32
        assert not np.array_equal(full, hessian)  # ...really float32, so the tolerance above is needed
        rows = np.array([4, 0, 3 * store.n_atoms(i) - 1])
        np.testing.assert_array_equal(store.hessian_rows("t", i, rows), full[rows])
        np.testing.assert_allclose(store.hessian_rows("t", i, rows), hessian[rows], rtol=1e-6, atol=1e-6)
        asymmetry = store.file["teachers/t/asymmetry"][i]
        assert asymmetry == pytest.approx(np.abs(hessian - hessian.T).max(), rel=1e-6)
    store.close()


def test_write_teacher_records_asymmetry(store_path, rng):
    path, _ = store_path
    store = HessianStore(path, mode="a")
    store.create_teacher("t", {})
    n = store.n_atoms(0)
    h = random_symmetric(rng, n)
    h[1, 4] += 0.25
    store.write_teacher("t", 0, 0.0, np.zeros((n, 3)), h)
    assert store.file["teachers/t/asymmetry"][0] == pytest.approx(0.25, rel=1e-6)
    store.close()


# ---- errors name the file and the index --------------------------------------------------------------------
def test_missing_forces_error_names_source():
    s = Structure(z=[8, 1, 1], positions=molecule("H2O").positions, energy=-10.0, source="water.xyz[frame 3]")
    with pytest.raises(InvalidStructureError, match=re.escape("water.xyz[frame 3]") + ".*missing reference forces"):
        s.validate()
    s.validate(require_labels=False)  # fine as an unlabelled structure


def test_read_ase_without_forces_names_file_and_frame(tmp_path):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    path = tmp_path / "frames.extxyz"
    frames = []
    for k in range(3):
        atoms = molecule("H2O")
        atoms.rattle(0.01, seed=k)
        forces = None if k == 2 else np.zeros((3, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - k, forces=forces)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(InvalidStructureError, match=re.escape(f"{path}[frame 2]") + ".*forces"):
        list(read_ase(path))
    assert len(list(read_ase(path, require_labels=False))) == 3
    assert len(list(read_ase(path, index=":2"))) == 2


def test_nan_positions_error_names_source_and_nothing_is_written(tmp_path, rng):
    structures = make_structures(rng)
    structures[1].positions[2, 0] = np.nan
    structures[1].source = "traj.extxyz[frame 1]"
    path = tmp_path / "bad.h5"
    with pytest.raises(InvalidStructureError, match=re.escape("traj.extxyz[frame 1]") + ".*NaN"):
        write_structures(path, structures)
    assert list(tmp_path.iterdir()) == []  # neither the store nor a .partial file


def test_failed_write_leaves_no_store_behind(tmp_path, rng, monkeypatch):
    """A failure while writing (after validation) leaves no file at the store path; a retry then works."""
    import hessdistill.data.store as store_module

    path = tmp_path / "store.h5"
    structures = make_structures(rng)
    real_stack = np.stack

    def failing_stack(arrays, *args, **kwargs):
        arrays = list(arrays)
        if arrays and np.asarray(arrays[0]).dtype == bool:  # the pbc dataset, midway through the write
            raise OSError("disk full")
        return real_stack(arrays, *args, **kwargs)

    monkeypatch.setattr(store_module.np, "stack", failing_stack)
    with pytest.raises(OSError, match="disk full"):
        write_structures(path, structures)
    monkeypatch.undo()
    assert not path.exists()
    write_structures(path, structures)
    assert len(HessianStore(path)) == len(structures)


def test_hessian_shape_mismatch_names_file_and_index(store_path, rng):
    path, _ = store_path
    store = HessianStore(path, mode="a")
    store.create_teacher("t", {})
    n = store.n_atoms(1)
    with pytest.raises(StoreError,
                       match=re.escape(f"{path}[1]") + f".*expected \\({n}, 3\\) and \\({3 * n}, {3 * n}\\)"):
        store.write_teacher("t", 1, 0.0, np.zeros((n, 3)), np.zeros((3 * n - 3, 3 * n - 3)))
    with pytest.raises(StoreError, match=re.escape(f"{path}[1]") + ".*NaN"):
        store.write_teacher("t", 1, float("nan"), np.zeros((n, 3)), np.zeros((3 * n, 3 * n)))
    assert not store.teacher_done("t")[1]  # nothing marked done by the failed writes
    store.close()


def test_missing_teacher_group_names_file(store_path):
    path, _ = store_path
    store = HessianStore(path)
    for call in (lambda: store.hessian("ani1x", 0), lambda: store.teacher_labels("ani1x", 0)):
        with pytest.raises(StoreError, match=re.escape(str(path)) + ".*no labels from teacher 'ani1x'.*precompute"):
            call()


def test_non_store_files_are_rejected_with_their_path(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match=re.escape(str(other)) + ".*not a hessdistill store"):
        HessianStore(other)
    missing = tmp_path / "missing.h5"
    with pytest.raises(StoreError, match=re.escape(f"store not found: {missing}")):
        HessianStore(missing)
    with pytest.raises(StoreError, match="no structures"):
        write_structures(tmp_path / "empty.h5", [])


def test_store_survives_pickling_for_dataloader_workers(store_path):
    import pickle

    path, structures = store_path
    store = HessianStore(path)
    store.structure(0)  # opens the h5py handle
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.structure(1).positions, structures[1].positions)
