"""Data module: splits, per-item teacher Hessian rows and their batched lane layout, energy statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch_geometric.loader import DataLoader

from conftest import teacher_lane_rows
from hessdistill.data import keys
from hessdistill.data.datamodule import StoreDataModule, StoreDataset
from hessdistill.data.labels import StoredLabels
from hessdistill.data.splits import split_indices
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import Structure
from hessdistill.hessian.rows import force_jacobian_rows

TEACHER = "ani1x"


# ---- splits ------------------------------------------------------------------------------------------------
def test_split_indices_deterministic_disjoint_covering():
    a = split_indices(50, (0.6, 0.2, 0.2), seed=3)
    b = split_indices(50, (0.6, 0.2, 0.2), seed=3)
    c = split_indices(50, (0.6, 0.2, 0.2), seed=4)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["train"], c["train"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [30, 10, 10]
    together = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(together.tolist()) == list(range(50))  # disjoint and covering
    for part in a.values():
        assert np.all(np.diff(part) > 0)  # sorted, so HDF5 reads go forward


def test_split_indices_partial_and_invalid():
    parts = split_indices(10, (0.5, 0.2, 0.1), seed=0)
    sizes = [len(parts[k]) for k in ("train", "val", "test")]
    assert sizes == [5, 2, 1]
    assert len(set(np.concatenate(list(parts.values())).tolist())) == 8
    # rounding up (1.5 → 2 twice) never makes the splits overlap or exceed n
    parts = split_indices(3, (0.5, 0.5, 0.0), seed=0)
    together = np.concatenate(list(parts.values())).tolist()
    assert sorted(together) == [0, 1, 2] and len(parts["train"]) == 2
    with pytest.raises(ValueError, match="sum to"):
        split_indices(10, (0.8, 0.3, 0.0), seed=0)
    with pytest.raises(ValueError, match="≥ 0"):
        split_indices(10, (1.1, -0.1, 0.0), seed=0)


# ---- items and batches -------------------------------------------------------------------------------------
def make_dataset(path, rows: int, rows_seed: int = 0, dtype=torch.float64, indices=None):
    store = HessianStore(path)
    idx = np.arange(len(store)) if indices is None else np.asarray(indices)
    return StoreDataset(store, idx, StoredLabels(TEACHER), rows=rows, cutoff=4.0, dtype=dtype, rows_seed=rows_seed)


def test_items_carry_the_stored_hessian_rows(labelled_store):
    ds = make_dataset(labelled_store, rows=3, indices=[5, 0, 9])
    store = ds.store
    for k, i in enumerate([5, 0, 9]):
        item = ds[k]
        n = store.n_atoms(i)
        assert int(item.idx) == i
        assert item.sampled_rows.shape == (1, 3) and item.teacher_rows.shape == (3, n, 3)
        rows = item.sampled_rows[0].numpy()
        assert len(set(rows.tolist())) == 3 and rows.max() < 3 * n
        expected = store.hessian(TEACHER, i)[rows]  # (s, 3N)
        np.testing.assert_array_equal(item.teacher_rows.reshape(3, 3 * n).numpy(), expected)
        energy, forces = store.teacher_labels(TEACHER, i)
        assert float(item.teacher_energy) == energy
        np.testing.assert_array_equal(item.teacher_forces.numpy(), forces)
        np.testing.assert_array_equal(item.forces.numpy(), store.structure(i).forces)
        assert item.edge_index.shape[0] == 2 and item.edge_index.shape[1] == n * (n - 1)  # all pairs within 4 Å


def test_evaluation_items_draw_fixed_rows_and_training_items_fresh_rows_per_epoch(labelled_store):
    fixed = make_dataset(labelled_store, rows=2, rows_seed=123)
    assert torch.equal(fixed[3].sampled_rows, fixed[3].sampled_rows)
    assert torch.equal(fixed[3].teacher_rows, fixed[3].teacher_rows)
    other = make_dataset(labelled_store, rows=2, rows_seed=999)
    assert any(not torch.equal(fixed[k].sampled_rows, other[k].sampled_rows) for k in range(len(fixed)))

    training = make_dataset(labelled_store, rows=1)
    assert torch.equal(training[(3, 0)].sampled_rows, training[(3, 0)].sampled_rows)  # reproducible per epoch
    seen = {int(training[(3, epoch)].sampled_rows) for epoch in range(20)}
    assert len(seen) > 1  # training items draw new rows every epoch


def test_batches_hold_rows_in_the_lane_layout_of_force_jacobian_rows(labelled_store, ani_teacher):
    """Items' rows (s, N, 3) collate along the atom axis into (s, Ntot, 3): the lane layout in which
    force_jacobian_rows returns −H rows for the same ``sampled_rows`` indices, with no permute anywhere."""
    s = 3
    ds = make_dataset(labelled_store, rows=s, indices=[1, 6, 11, 14])
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    n_total = int(batch.ptr[-1])
    assert batch.teacher_rows.shape == (s, n_total, 3) and batch.sampled_rows.shape == (4, s)

    full = [torch.as_tensor(ds.store.hessian(TEACHER, int(i)), dtype=torch.float64) for i in batch.idx]
    torch.testing.assert_close(batch.teacher_rows, teacher_lane_rows(full, batch.sampled_rows), atol=0, rtol=0)

    # the teacher's own force Jacobian rows at the same indices (float32 storage tolerance)
    prepared = ani_teacher._prepare(batch.clone())
    energy = ani_teacher.energy(prepared)
    (grad,) = torch.autograd.grad(energy.sum(), prepared.pos, create_graph=True)
    rows = force_jacobian_rows(-grad, prepared.pos, batch.sampled_rows, batch.ptr, create_graph=False)
    torch.testing.assert_close(batch.teacher_rows, -rows, atol=1e-4, rtol=1e-5)


def test_every_batch_field_is_in_the_schema(labelled_store):
    ds = make_dataset(labelled_store, rows=2, indices=[0, 5])
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert set(batch.keys()) - {"batch", "ptr"} <= set(keys.FIELDS)


# ---- energy statistics -------------------------------------------------------------------------------------
def test_energy_statistics_recovers_per_element_references(tmp_path, rng):
    refs = {1: -13.6, 6: -1029.8, 7: -1485.3, 8: -2041.7}
    names = ["H2O", "CH4", "NH3", "CH3OH", "HCOOH", "CH3CH2OH", "HCN", "N2H4", "CH3NO2", "H2CO", "C2H2", "NO2"]
    structures = []
    for name in names:
        atoms = molecule(name)
        s = Structure.from_atoms(atoms, source=name)
        s.energy = float(sum(refs[int(z)] for z in atoms.numbers))
        s.forces = rng.normal(size=(len(atoms), 3))
        structures.append(s)
    path = tmp_path / "linear.h5"
    write_structures(path, structures)
    dm = StoreDataModule(str(path), split=(0.75, 0.25, 0.0), split_seed=1, cutoff=4.0)
    atom_refs, force_rms = dm.energy_statistics()
    assert atom_refs.shape == (119,)
    train = dm.splits["train"]
    assert len(train) == 9
    present = {int(z) for i in train for z in structures[i].z}
    for z in present:
        assert float(atom_refs[z]) == pytest.approx(refs[z], abs=1e-8)
    absent = [z for z in range(119) if z not in present]
    assert torch.all(atom_refs[absent] == 0)
    train_forces = np.concatenate([structures[i].forces for i in train])
    assert force_rms == pytest.approx(float(np.sqrt((train_forces**2).mean())), rel=1e-12)
    all_forces = np.concatenate([s.forces for s in structures])
    assert force_rms != pytest.approx(float(np.sqrt((all_forces**2).mean())), rel=1e-9)  # training split only


def test_datamodule_loaders_sample_training_and_fixed_evaluation_rows(labelled_store):
    dm = StoreDataModule(str(labelled_store), labels=StoredLabels(TEACHER), rows=2, batch_size=5,
                         split=(0.5, 0.25, 0.25), cutoff=4.0)
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert train.sampled_rows.shape == (5, 2)
    assert val.sampled_rows.shape[1] == dm.eval_rows  # evaluation uses eval_rows with fixed seeds
    val_again = next(iter(dm.val_dataloader()))
    assert torch.equal(val.sampled_rows, val_again.sampled_rows)


def test_store_requires_complete_teacher_labels(tmp_path, labelled_store):
    import shutil

    path = tmp_path / "copy.h5"
    shutil.copy(labelled_store, path)
    with HessianStore(path, mode="a") as store:
        store.file["teachers"][TEACHER]["done"][4] = False
    with HessianStore(path) as store:
        assert not store.is_complete(TEACHER)
        with pytest.raises(StoreError, match=rf"copy.h5: teacher '{TEACHER}' has labels for 15/16 structures; run `x`"):
            store.require_complete(TEACHER, "x")
    with HessianStore(labelled_store) as store:
        assert store.is_complete(TEACHER)
        store.require_complete(TEACHER)
