"""Several stores read as one (``StoreSet``): the same structures, labels, rows, splits and statistics as one store
holding them all, and the rank-local training order that reads only a rank's own stores."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import STORE_MOLECULES, write_labelled_store
from hessdistill.data.datamodule import EpochSampler, StoreDataModule
from hessdistill.data.labels import StoredLabels
from hessdistill.data.store import HessianStore
from hessdistill.data.store_set import StoreSet, open_stores


@pytest.fixture(scope="module")
def parts_and_whole(tmp_path_factory, ani_teacher):
    """Two stores of 4 structures (H2O, NH3 | CH4, CH3OH; 2 rattles each) and one store of the same 8, all with
    ANI-1x labels and Hessians (write_labelled_store seeds molecule k, rattle r with seed + 100 k + r)."""
    folder = tmp_path_factory.mktemp("set")
    a = write_labelled_store(folder / "a.h5", ani_teacher, names=STORE_MOLECULES[:2], per_molecule=2)
    b = write_labelled_store(folder / "b.h5", ani_teacher, names=STORE_MOLECULES[2:], per_molecule=2, seed=200)
    whole = write_labelled_store(folder / "whole.h5", ani_teacher, names=STORE_MOLECULES, per_molecule=2)
    return [str(a), str(b)], str(whole)


def test_a_store_set_reads_like_one_store_of_all_structures(parts_and_whole):
    paths, whole_path = parts_and_whole
    with StoreSet(paths) as stores, HessianStore(whole_path) as whole:
        assert len(stores) == len(whole) == 8 and stores.n_atoms().tolist() == whole.n_atoms().tolist()
        assert stores.info_values("molecule") == whole.info_values("molecule")
        for g in range(8):
            a, b = stores.structure(g), whole.structure(g)
            assert np.array_equal(a.positions, b.positions) and np.array_equal(a.z, b.z) and a.energy == b.energy
            np.testing.assert_allclose(stores.hessian("ani1x", g), whole.hessian("ani1x", g), atol=1e-5)
        subset = np.array([0, 2, 3, 5, 6])
        for indices in (None, subset):
            refs, rms = stores.energy_statistics(indices)
            want_refs, want_rms = whole.energy_statistics(indices)
            np.testing.assert_allclose(refs, want_refs, rtol=1e-10, atol=1e-10 * np.abs(want_refs).max())
            assert rms == pytest.approx(want_rms, rel=1e-12)
        assert stores.is_complete("ani1x") and stores.teacher_done("ani1x").all()
        assert stores.fingerprint() == StoreSet(paths).fingerprint() != StoreSet(paths[::-1]).fingerprint()
        with pytest.raises(IndexError, match=r"a\.h5\+.*b\.h5: structure 8 out of range 0\.\.7"):
            stores.structure(8)
    assert isinstance(open_stores(paths[0]), HessianStore) and isinstance(open_stores(paths), StoreSet)


def test_datamodule_over_a_store_set_gives_the_items_of_one_store(parts_and_whole):
    paths, whole_path = parts_and_whole
    options = {"labels": StoredLabels("ani1x"), "rows": 2, "split": (0.5, 0.25, 0.25), "cutoff": 4.0, "seed": 3}
    sharded, single = StoreDataModule(paths, **options), StoreDataModule(whole_path, **options)
    assert all(np.array_equal(sharded.splits[k], single.splits[k]) for k in single.splits)
    a, b = sharded.dataset("train"), single.dataset("train")
    for key in [(k, 1) for k in range(len(a))]:
        x, y = a[key], b[key]
        assert x.idx == y.idx and np.array_equal(x.sampled_rows, y.sampled_rows)
        np.testing.assert_allclose(x.teacher_rows.numpy(), y.teacher_rows.numpy(), atol=1e-5)
    refs, rms = sharded.energy_statistics()
    np.testing.assert_allclose(refs.numpy(), single.energy_statistics()[0].numpy(), rtol=1e-10, atol=1e-7)


def test_rank_local_order_reads_only_the_ranks_own_stores(parts_and_whole, monkeypatch):
    paths, _ = parts_and_whole
    dm = StoreDataModule(paths, split=(0.75, 0.25, 0.0), cutoff=4.0, rank_local=True)
    train = dm.splits["train"]
    parts = dm.store_parts("train")
    assert [train[p].tolist() for p in parts] == [train[train < 4].tolist(), train[train >= 4].tolist()]
    seen = []
    for rank in range(2):
        monkeypatch.setattr(EpochSampler, "_rank_world", staticmethod(lambda rank=rank: (rank, 2)))
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(1)
        positions = [k for k, _ in sampler]
        assert len(positions) == len(sampler) == max(len(p) for p in parts)  # equal batches on both ranks
        assert set(positions) == set(parts[rank].tolist())  # only structures of its own store
        seen.append(positions)
        sampler.set_epoch(2)
        assert sorted(k for k, _ in sampler) == sorted(positions)
    monkeypatch.setattr(EpochSampler, "_rank_world", staticmethod(lambda: (0, 3)))  # 3 ranks, 2 stores: global order
    sampler = dm.train_dataloader().sampler
    assert len(sampler) == -(-len(train) // 3)
