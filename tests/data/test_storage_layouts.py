"""Hessian storage layouts (full, upper, rows) × dtypes round-trip; row-subset precompute and training reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import label_with, make_batch, rattled
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.labels import StoredLabels
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.teacher_step.run import precompute_teacher


@pytest.fixture
def small_store(tmp_path, ani_teacher):
    path = tmp_path / "s.h5"
    atoms = [rattled(n, seed=k) for k, n in enumerate(["H2O", "NH3", "CH3OH", "CH4"])]
    write_structures(path, label_with(ani_teacher, atoms, source=str(path)))
    return path


@pytest.mark.parametrize("layout", ["full", "upper"])
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float16", 2.0**-11)])
def test_symmetric_layouts_round_trip(small_store, ani_teacher, layout, dtype, rtol):
    store = HessianStore(small_store, mode="a")
    precompute_teacher(store, ani_teacher, layout=layout, dtype=dtype, progress=False)
    batch = make_batch([store.structure(i).to_atoms() for i in range(len(store))])
    exact = ani_teacher.hessians(batch).hessians
    for i, h in enumerate(exact):
        h = h.numpy()
        got = store.hessian("ani1x", i)
        assert got.shape == h.shape
        # float16 keeps 11 significant bits: |error| ≤ 2⁻¹¹·|h| (plus the float32 floor near zero)
        assert np.all(np.abs(got - h) <= rtol * np.abs(h) + 1e-5), (layout, dtype, np.abs(got - h).max())
        rows = np.array([3 * h.shape[0] // 9, 0, h.shape[0] - 1])
        np.testing.assert_array_equal(store.hessian_rows("ani1x", i, rows), got[rows])
    group = store.teacher_group("ani1x")
    assert group.attrs["hessian_layout"] == layout and group.attrs["hessian_dtype"] == dtype
    n = 3 * store.n_atoms()
    expected_size = (n * n).sum() if layout == "full" else (n * (n + 1) // 2).sum()
    assert group["hessian"].shape == (expected_size,)
    store.close()


def test_row_subset_precompute_stores_exact_rows_and_resumes(small_store, ani_teacher):
    store = HessianStore(small_store, mode="a")
    k = 3
    result = precompute_teacher(store, ani_teacher, layout="rows", rows_per_structure=k, seed=7, progress=False)
    assert result["computed"] == len(store)
    batch = make_batch([store.structure(i).to_atoms() for i in range(len(store))])
    exact = ani_teacher.hessians(batch).hessians
    for i, h in enumerate(exact):
        stored = store.stored_rows("ani1x", i)
        assert len(stored) == k == len(set(stored.tolist()))
        np.testing.assert_allclose(store.hessian_rows("ani1x", i, stored), h.numpy()[stored], rtol=1e-5, atol=1e-5)
        with pytest.raises(StoreError, match=r"stores rows .* only"):
            store.hessian_rows("ani1x", i, [int(np.setdiff1d(np.arange(h.shape[0]), stored)[0])])
    group = store.teacher_group("ani1x")
    assert group["hessian"].shape == ((k * 3 * store.n_atoms()).sum(),)  # disk cut by 3N/k
    # the same seed draws the same rows: a rerun over unfinished structures cannot mix two samplings
    group["done"][1] = False
    before = store.stored_rows("ani1x", 1)
    precompute_teacher(store, ani_teacher, layout="rows", rows_per_structure=k, seed=7, progress=False)
    np.testing.assert_array_equal(store.stored_rows("ani1x", 1), before)
    with pytest.raises(StoreError, match="exists with Hessian storage"):
        precompute_teacher(store, ani_teacher, layout="full", progress=False)
    store.close()


def test_datamodule_samples_only_stored_rows(small_store, ani_teacher):
    store = HessianStore(small_store, mode="a")
    precompute_teacher(store, ani_teacher, layout="rows", rows_per_structure=4, progress=False)
    store.close()
    dm = StoreDataModule(str(small_store), labels=StoredLabels("ani1x"), rows=2, split=(1.0, 0.0, 0.0), cutoff=4.0)
    ds = dm.dataset("train")
    check = HessianStore(small_store)
    for _ in range(3):
        for k in range(len(ds)):
            item = ds[k]
            i = int(item.idx)
            stored = set(check.stored_rows("ani1x", i).tolist())
            assert set(item.sampled_rows[0].tolist()) <= stored
            expected = check.hessian_rows("ani1x", i, item.sampled_rows[0].numpy())
            torch.testing.assert_close(item.teacher_rows.reshape(2, -1), torch.as_tensor(expected))
    too_many = StoreDataModule(str(small_store), labels=StoredLabels("ani1x"), rows=5, split=(1.0, 0.0, 0.0),
                               cutoff=4.0)
    with pytest.raises(ValueError, match=r"s.h5\[0\]: 5 Hessian rows asked per structure, 4 available"):
        too_many.dataset("train")[0]
