"""Sharded precompute (``shard=i/n``) and ``merge_shards=n`` give the same store as one unsharded run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import label_with, precompute_config, rattled
from hessdistill.cli.precompute import run
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.teacher_step.shards import open_shard, parse_shard, shard_indices


@pytest.mark.parametrize("layout", ["full", "rows"])
def test_three_shards_merge_to_the_unsharded_result(tmp_path, ani_teacher, layout):
    atoms = [rattled(n, seed=k) for k, n in enumerate(["H2O", "NH3", "CH4", "CH3OH", "HCOOH"] * 2)]
    sharded, single = tmp_path / "sharded.h5", tmp_path / "single.h5"
    write_structures(sharded, label_with(ani_teacher, atoms))
    shutil.copy(sharded, single)
    storage = [f"storage.layout={layout}"] + (["storage.rows=2"] if layout == "rows" else ["features=true"])
    run(precompute_config(single, *storage))
    for i in range(3):
        result = run(precompute_config(sharded, f"shard={i}/3", *storage))
        assert result["computed"] == len(shard_indices(len(atoms), i, 3))
    with HessianStore(sharded) as store:
        assert store.teachers() == []  # shards never write into the store itself
    with pytest.raises(FileNotFoundError, match="missing"):
        run(precompute_config(sharded, "merge_shards=4"))
    assert run(precompute_config(sharded, "merge_shards=3"))["merged"] == len(atoms)
    with HessianStore(sharded) as a, HessianStore(single) as b:
        assert a.teacher_done("ani1x").all()
        for i in range(len(atoms)):
            np.testing.assert_array_equal(a.stored_rows("ani1x", i), b.stored_rows("ani1x", i))
            rows = a.stored_rows("ani1x", i)
            np.testing.assert_allclose(a.hessian_rows("ani1x", i, rows), b.hessian_rows("ani1x", i, rows), atol=1e-5)
            np.testing.assert_allclose(a.teacher_labels("ani1x", i)[1], b.teacher_labels("ani1x", i)[1], atol=1e-9)
            if layout == "full":  # node features travel through the merge too
                np.testing.assert_allclose(a.node_features("ani1x", i), b.node_features("ani1x", i), atol=1e-6)


def test_unfinished_shard_is_not_merged(tmp_path, ani_teacher):
    store = tmp_path / "s.h5"
    write_structures(store, label_with(ani_teacher, [rattled(n, seed=1) for n in ["H2O", "NH3", "CH4", "CH3OH"]]))
    run(precompute_config(store, "shard=0/2"))
    with HessianStore(store) as main, open_shard(main, "ani1x", 1, 2) as shard1:  # started, nothing labelled yet
        shard1.create_teacher("ani1x", {})
    with pytest.raises(ValueError, match=r"shard 1/2 has not finished \(0/2"):
        run(precompute_config(store, "merge_shards=2"))
    with HessianStore(store) as s:
        assert not s.teacher_done("ani1x")[1::2].any()


@pytest.mark.parametrize("bad", ["3", "2/2", "a/b", "-1/2"])
def test_bad_shard_spec(bad):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(bad)


def test_subset_source_can_be_any_reader(tmp_path, rng):
    """``subset.source`` is a Hydra call: an npz subset builds its store through the npz reader."""
    from ase.units import kcal, mol

    z = np.array([8, 1, 1])
    r = np.array([[0.0, 0.0, 0.1], [0.0, 0.76, -0.5], [0.0, -0.76, -0.5]]) + rng.normal(0, 0.02, (4, 3, 3))
    np.savez(tmp_path / "water.npz", z=z, R=r, E=rng.normal(-47000, 1, (4, 1)), F=rng.normal(size=(4, 3, 3)))
    store = tmp_path / "water.h5"
    cfg = precompute_config(store, "subset.source._target_=hessdistill.data.sources.npz.read_npz",
                         f"subset.source.path={tmp_path / 'water.npz'}", "~subset.source.length_unit",
                         "~subset.source.energy_key", "~subset.source.forces_key",
                         f"subset.source.energy_unit={kcal / mol}")
    run(cfg)
    with HessianStore(store) as s:
        assert len(s) == 4 and s.teacher_done("ani1x").all()
        assert s.structure(2).info["molecule"] == "water"
