"""Teacher-labelled augmentation: thermal normal modes, labels equal to the teacher's, training split only,
resumable building, energy offsets."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.units import kB
from torch_geometric.data import Batch

from conftest import compose_config, label_with, make_batch, rattled
from hessdistill.augment import generators
from hessdistill.augment.normal_modes import internal_modes, rigid_basis, thermal_displacements
from hessdistill.augment.run import augmented
from hessdistill.data.added import fit_element_offsets, fit_molecule_offsets
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.keys import NORMAL_MODE, ORIGINS, RATTLE, TEACHER_MD
from hessdistill.data.labels import StoredLabels
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.teacher_step.run import precompute_teacher
from hessdistill.training.terms import LossTerm

SPLIT = (0.5, 0.25, 0.25)


# ---- normal modes ------------------------------------------------------------------------------------------
def test_rigid_basis_spans_translations_and_rotations():
    assert rigid_basis(rattled("CH3OH").positions).shape == (18, 6)
    assert rigid_basis(molecule("CO2").positions).shape == (9, 5)  # linear: no rotation about the axis
    assert rigid_basis(np.zeros((1, 3))).shape == (3, 3)
    basis = rigid_basis(rattled("NH3").positions)
    np.testing.assert_allclose(basis.T @ basis, np.eye(6), atol=1e-12)


def test_normal_mode_displacements_have_thermal_variance(ani_teacher):
    """⟨λ_k a_k²⟩ = k_B·T for every kept mode, the modes uncorrelated, no rigid motion, nothing along soft modes."""
    atoms = rattled("CH3OH", seed=3)
    hessian = ani_teacher.hessians(make_batch([atoms])).hessians[0].numpy()
    eigenvalues, modes = internal_modes(hessian, atoms.positions, min_eigenvalue=0.5)
    all_values, _ = internal_modes(hessian, atoms.positions, min_eigenvalue=-np.inf)
    assert len(all_values) == 12 and len(eigenvalues) == int((all_values > 0.5).sum()) >= 8
    n, temperature = 20000, 300.0
    d = thermal_displacements(eigenvalues, modes, temperature, n, np.random.default_rng(0)).reshape(n, -1)
    amplitudes = d @ modes  # (n, K)
    equipartition = (eigenvalues * amplitudes**2).mean(axis=0) / (kB * temperature)
    tolerance = 5 * np.sqrt(2 / n)  # λa²/kT ~ χ²₁: variance 2
    assert np.abs(equipartition - 1).max() < tolerance, equipartition
    scaled = amplitudes * np.sqrt(eigenvalues / (kB * temperature))
    correlation = scaled.T @ scaled / n - np.eye(len(eigenvalues))
    assert np.abs(correlation).max() < 5 / np.sqrt(n)
    assert np.abs(d @ rigid_basis(atoms.positions)).max() < 1e-10  # no translation or rotation
    assert np.abs(d - amplitudes @ modes.T).max() < 1e-10  # nothing along the skipped soft modes


# ---- augmentation stores -----------------------------------------------------------------------------------
def augment_config(store, path, name: str, *overrides):
    return compose_config("train", [f"subset.store={store}", f"augment={name}", f"augment.store={path}",
                                    "augment.progress=false", *overrides])


def datamodule(store, split_seed: int = 0) -> StoreDataModule:
    return StoreDataModule(str(store), labels=StoredLabels("ani1x"), rows=2, batch_size=4, split=SPLIT,
                           split_seed=split_seed, cutoff=4.0)


GENERATORS = {  # augment config, its overrides (tiny), origin flag
    "rattle": (["augment.generator.copies=2"], RATTLE),
    "normal_modes": (["augment.generator.copies=2"], NORMAL_MODE),
    "teacher_md": (["augment.generator.temperatures_K=[400.0]", "augment.generator.snapshots=2",
                    "augment.generator.interval=3", "augment.generator.equilibrate=0"], TEACHER_MD),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_augmentation_labels_equal_the_teachers(labelled_store, ani_teacher, tmp_path, name):
    """Every augmented structure: made from a training structure, flagged, and labelled exactly as the teacher labels
    it when recomputed at the stored positions (reference energy and forces, teacher energy, forces, Hessian)."""
    overrides, origin = GENERATORS[name]
    dm = datamodule(labelled_store)
    (path,) = augmented(augment_config(labelled_store, tmp_path / "aug.h5", name, *overrides), dm)
    with HessianStore(path) as store, HessianStore(labelled_store) as main:
        train = dm.splits["train"]
        assert len(store) == 2 * len(train) and store.is_complete("ani1x")
        assert sorted(set(store.info_values("parent"))) == train.tolist()
        assert set(store.info_values("origin")) == {origin} and ORIGINS[origin] == name.rstrip("s")
        for i in range(len(store)):
            s, parent = store.structure(i), main.structure(store.structure(i).info["parent"])
            assert s.info["molecule"] == parent.info["molecule"] and np.array_equal(s.z, parent.z)
            assert 1e-3 < np.abs(s.positions - parent.positions).max() < 1.0  # moved, not exploded
            out = ani_teacher.hessians(make_batch([s.to_atoms()]))
            energy, forces = float(out.energy[0]), out.forces.numpy()
            assert s.energy == pytest.approx(energy, abs=1e-8) and np.abs(s.forces - forces).max() < 1e-8
            stored_energy, stored_forces = store.teacher_labels("ani1x", i)
            assert stored_energy == pytest.approx(energy, abs=1e-8) and np.abs(stored_forces - forces).max() < 1e-8
            np.testing.assert_allclose(store.hessian("ani1x", i), out.hessians[0].numpy(), rtol=1e-5, atol=1e-4)
    assert not (tmp_path / "aug.h5.parts").exists()  # parts removed once the store is complete


def test_rattles_have_the_configured_spread(labelled_store, tmp_path):
    dm = datamodule(labelled_store)
    (path,) = augmented(augment_config(labelled_store, tmp_path / "r.h5", "rattle", "augment.generator.copies=3",
                                       "augment.generator.stdev=0.05"), dm)
    with HessianStore(path) as store, HessianStore(labelled_store) as main:
        noise = np.concatenate([(store.structure(i).positions - main.structure(store.structure(i).info["parent"])
                                 .positions).ravel() for i in range(len(store))])
    assert len(noise) > 250 and abs(noise.std() / 0.05 - 1) < 0.15 and abs(noise.mean()) < 0.01


def test_augmented_structures_never_enter_validation_or_test(labelled_store, tmp_path):
    dm = datamodule(labelled_store)
    (path,) = augmented(augment_config(labelled_store, tmp_path / "aug.h5", "rattle", "augment.generator.copies=1"),
                        dm)
    before = {name: dm.dataset(name).indices.copy() for name in ("val", "test")}
    dm.add_training_store(path)
    for name in ("val", "test"):  # the subset store's own structures, as without augmentation
        dataset = dm.dataset(name)
        assert dataset.store is dm.store and np.array_equal(dataset.indices, before[name])
    train = dm.dataset("train")
    n_train = len(dm.splits["train"])
    assert len(train) == 2 * n_train
    items = [train[k] for k in range(len(train))]
    assert [int(d.origin) for d in items] == [0] * n_train + [RATTLE] * n_train
    assert {int(d.idx) for d in items[:n_train]} == set(dm.splits["train"].tolist())
    assert {int(d.idx) for d in items[n_train:]} == set(range(16, 16 + n_train))  # ids after the subset store's
    with HessianStore(path) as store:
        assert set(store.info_values("parent")) <= set(dm.splits["train"].tolist())
    other = datamodule(labelled_store, split_seed=1)  # another split: these parents include its val/test structures
    with pytest.raises(StoreError, match="descend from structures outside this run's training split"):
        other.add_training_store(path)


def test_augmentation_resumes_after_a_kill(labelled_store, tmp_path, monkeypatch):
    """A build killed after two parents resumes from its parts to the store an uninterrupted build writes; a store
    made with another config is refused."""
    config = augment_config(labelled_store, tmp_path / "killed.h5", "rattle", "augment.generator.copies=2")
    dm = datamodule(labelled_store)
    calls, original = [], generators.Rattle.configurations

    def dies_on_the_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args)

    monkeypatch.setattr(generators.Rattle, "configurations", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        augmented(config, dm)
    assert not (tmp_path / "killed.h5").exists()
    assert len(list((tmp_path / "killed.h5.parts").glob("*.npz"))) == 2
    monkeypatch.setattr(generators.Rattle, "configurations", original)
    (resumed,) = augmented(config, dm)
    (straight,) = augmented(augment_config(labelled_store, tmp_path / "straight.h5", "rattle",
                                           "augment.generator.copies=2"), dm)
    with HessianStore(resumed) as a, HessianStore(straight) as b:
        assert len(a) == len(b) == 16
        for i in range(len(a)):
            sa, sb = a.structure(i), b.structure(i)
            assert np.array_equal(sa.positions, sb.positions) and sa.energy == sb.energy
            assert np.array_equal(a.hessian("ani1x", i), b.hessian("ani1x", i))
    with pytest.raises(StoreError, match=r"was made with generator=.*delete it"):
        augmented(augment_config(labelled_store, tmp_path / "straight.h5", "rattle", "augment.generator.copies=3"), dm)


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE",
                    reason="HDF5 file locking is switched off here (HDF5_USE_FILE_LOCKING=FALSE)")
def test_a_finished_store_is_shared_with_a_run_that_reads_it(labelled_store, tmp_path):
    """Runs of a sweep share one augmentation store: while another process reads the finished store (a training
    run), a second run with the same config opens it too, instead of failing on HDF5's write lock."""
    config = augment_config(labelled_store, tmp_path / "shared.h5", "rattle", "augment.generator.copies=1")
    dm = datamodule(labelled_store)
    (path,) = augmented(config, dm)
    reader = subprocess.Popen([sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); "
                               "print('open', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="is locked"):  # the lock this test is about is real here
            HessianStore(path, mode="a")
        assert augmented(config, dm) == [path]
    finally:
        reader.communicate("")


# ---- energies of teacher-labelled structures ---------------------------------------------------------------
def test_fitted_offsets_recover_known_offsets(rng):
    groups = np.array(["a", "b", "c"] * 20)
    teacher = rng.normal(-1000, 50, size=60)
    known = {"a": 0.08, "b": 0.25, "c": -0.1}
    offsets = fit_molecule_offsets(groups, teacher + np.array([known[g] for g in groups]), teacher)
    assert offsets == pytest.approx(known, abs=1e-9)
    counts = np.zeros((60, 119))
    counts[:, [1, 6, 8, 17]] = rng.integers(0, 7, size=(60, 4))
    per_element = np.zeros(119)
    per_element[[1, 6, 8, 17]] = [0.01, -0.03, 0.05, 0.2]
    np.testing.assert_allclose(fit_element_offsets(counts, teacher + counts @ per_element, teacher), per_element,
                               atol=1e-9)


@pytest.fixture(scope="module")
def offset_store(tmp_path_factory, ani_teacher):
    """8 structures (H2O, CH4) whose reference energies are ANI-1x's plus a known offset per molecule, with ANI-1x
    labels, and their rattle augmentation (2 training parents per molecule)."""
    path = tmp_path_factory.mktemp("offsets") / "shifted.h5"
    atoms = []
    for k, name in enumerate(("H2O", "CH4")):
        for r in range(4):
            a = rattled(name, seed=10 * k + r)
            a.info["molecule"] = name
            atoms.append(a)
    structures = label_with(ani_teacher, atoms, source=str(path))
    for s in structures:
        s.energy += OFFSETS[s.info["molecule"]]
    write_structures(path, structures)
    with HessianStore(path, mode="a") as store:
        precompute_teacher(store, ani_teacher, progress=False)
    return path


OFFSETS = {"H2O": 0.12, "CH4": -0.2}  # eV, reference − teacher


@pytest.mark.parametrize("mode", ["forces_only", "molecule_offset", "element_offset"])
def test_teacher_energies_enter_the_loss_as_configured(offset_store, tmp_path, mode):
    dm = StoreDataModule(str(offset_store), labels=StoredLabels("ani1x"), rows=1, batch_size=16, split=(0.5, 0.5, 0),
                         cutoff=4.0, dtype="float64")
    (path,) = augmented(augment_config(offset_store, tmp_path / "aug.h5", "rattle", "augment.generator.copies=1"), dm)
    dm.add_training_store(path, mode)
    batch = Batch.from_data_list([dm.dataset("train")[k] for k in range(8)])
    added = batch.origin > 0
    assert int(added.sum()) == 4
    teacher = batch.teacher_energy[added]
    if mode == "forces_only":
        assert batch.energy_weight.tolist() == [1.0] * 4 + [0.0] * 4
    else:  # H2O and CH4 differ in composition, so both fits give each molecule its own offset back
        assert batch.energy_weight.tolist() == [1.0] * 8
        with HessianStore(path) as store:
            expected = torch.tensor([OFFSETS[m] for m in store.info_values("molecule")], dtype=teacher.dtype)
        torch.testing.assert_close(batch.energy[added] - teacher, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.forces[added[batch.batch]], batch.teacher_forces[added[batch.batch]])
    term = LossTerm("energy_loss", "energy", "energy")
    prediction = batch.energy + torch.arange(8, dtype=batch.energy.dtype)  # errors 0..7 eV
    value = term({"energy": prediction}, batch)
    weights = batch.energy_weight
    assert float(value) == pytest.approx(float((weights * torch.arange(8.0) ** 2).mean()))
    if mode == "forces_only":  # the added structures' energies do not matter at all
        assert float(term({"energy": prediction + 100 * added}, batch)) == pytest.approx(float(value))


def test_molecule_offsets_need_molecule_names(labelled_store, tmp_path):
    """The tiny store has molecule names; a store without them gets one line naming the key."""
    from hessdistill.data.structures import Structure

    plain = tmp_path / "plain.h5"
    with HessianStore(labelled_store) as store:
        structures = [Structure(s.z, s.positions, energy=s.energy, forces=s.forces) for s in store.structures()]
    write_structures(plain, structures)
    with HessianStore(labelled_store) as store, HessianStore(plain, mode="a") as out:
        out.copy_teacher_labels(store, "ani1x", np.arange(len(store)))
    dm = datamodule(plain)
    (path,) = augmented(augment_config(plain, tmp_path / "aug.h5", "rattle", "augment.generator.copies=1"), dm)
    with pytest.raises(StoreError, match="has no info key 'molecule'"):
        dm.add_training_store(path, "molecule_offset")
    dm.add_training_store(path, "element_offset")


def test_training_run_with_augmentation_offsets_and_residual_rows(labelled_store, tmp_path, monkeypatch):
    """hessdistill-train's config wiring: augment builds its store from the training split, teacher_energy and
    row_sampling reach the datamodule, and the residual buffer learns during the run."""
    from hessdistill.cli import train

    monkeypatch.chdir(tmp_path)
    seen = {}
    original = StoreDataModule.add_training_store

    def spy(self, path, teacher_energy="forces_only"):
        original(self, path, teacher_energy)
        seen.update(dm=self, path=path, teacher_energy=teacher_energy)

    monkeypatch.setattr(StoreDataModule, "add_training_store", spy)
    cfg = augment_config(labelled_store, tmp_path / "aug.h5", "rattle", "augment.generator.copies=1",
                         "experiment=demo", "trainer.max_epochs=1", "subset.batch_size=8",
                         "subset.split=[0.5,0.25,0.25]", "rows=2", "teacher_energy=molecule_offset",
                         "row_sampling=residual", f"logger.0.save_dir={tmp_path / 'logs'}",
                         "student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8",
                         "student.cutoff=4.0")
    result = train.run(cfg, str(tmp_path / "run"))
    dm = seen["dm"]
    assert seen["path"] == tmp_path / "aug.h5" and seen["teacher_energy"] == "molecule_offset"
    assert len(dm.dataset("train")) == 2 * len(dm.splits["train"]) and result["test"]["test/force_mae"] > 0
    buffer, offsets = dm.row_sampler.buffer, dm.row_sampler.offsets
    learnt = [int((~buffer[offsets[i] : offsets[i + 1]].isnan()).sum()) for i in range(len(offsets) - 1)]
    assert len(learnt) == 16 + 8 and all(n > 0 for n in learnt[16:])  # every added structure's rows were seen


def test_a_candidates_file_with_an_object_array_is_refused_naming_it(tmp_path):
    """A run folder's augmentation candidates are data: an object array (which would need unpickling) is one line
    naming the file and the array, never numpy's bare message."""
    from hessdistill.augment.builder import Candidates
    from hessdistill.data.structures import InvalidStructureError

    path = tmp_path / "candidates.npz"
    np.savez(path, positions=np.array([object()], dtype=object), energy=np.zeros(1), forces=np.zeros((1, 1, 3)),
             score=np.zeros(1), origin=np.zeros(1, dtype=np.int64), teacher_calls=3)
    with pytest.raises(InvalidStructureError, match=r"candidates\.npz: array 'positions' holds Python objects"):
        Candidates.load(path)
    good = Candidates(np.zeros((1, 2, 3)), np.ones(1), np.zeros((1, 2, 3)), np.zeros(1), np.zeros(1, np.int64), 3)
    good.save(path)
    loaded = Candidates.load(path)
    assert loaded.teacher_calls == 3 and np.array_equal(loaded.positions, good.positions)
