"""Compressed stores: lossless round trips for every layout, refusal of unfinished teachers, an interrupted
compression leaving the store as it was, new teachers on a packed store, and the precompute CLI option."""

from __future__ import annotations

import pickle
import shutil

import h5py
import numpy as np
import pytest

from conftest import label_with, precompute_config, rattled
from hessdistill.cli.precompute import run
from hessdistill.data import store_compression
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.store_compression import compress_store
from hessdistill.teacher_step.run import precompute_teacher

MOLECULES = ["H2O", "NH3", "CH4", "CH3OH", "HCOOH", "C2H6"]


def labelled(tmp_path, ani_teacher, name="s.h5", **precompute):
    path = tmp_path / name
    write_structures(path, label_with(ani_teacher, [rattled(n, seed=k) for k, n in enumerate(MOLECULES)]))
    with HessianStore(path, "a") as store:
        precompute_teacher(store, ani_teacher, progress=False, **precompute)
    return path


def assert_same_labels(a_path, b_path, teacher="ani1x"):
    with HessianStore(a_path) as a, HessianStore(b_path) as b:
        assert a.fingerprint() == b.fingerprint()
        for i in range(len(a)):
            rows = a.stored_rows(teacher, i)
            np.testing.assert_array_equal(rows, b.stored_rows(teacher, i))
            np.testing.assert_array_equal(a.hessian_rows(teacher, i, rows), b.hessian_rows(teacher, i, rows))
            energy, forces = a.teacher_labels(teacher, i)
            assert energy == b.teacher_labels(teacher, i)[0]
            np.testing.assert_array_equal(forces, b.teacher_labels(teacher, i)[1])


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
@pytest.mark.parametrize("layout", ["full", "upper", "rows"])
def test_compression_is_lossless_for_every_layout(tmp_path, ani_teacher, compression, layout):
    rows = {"rows_per_structure": 4} if layout == "rows" else {}
    original = labelled(tmp_path, ani_teacher, layout=layout, **rows)
    packed = tmp_path / "packed.h5"
    shutil.copy(original, packed)
    sizes = compress_store(packed, compression)
    assert sizes["bytes_before"] == original.stat().st_size
    assert_same_labels(original, packed)
    with h5py.File(original) as f, h5py.File(packed) as g:
        assert dict(f.attrs) == dict(g.attrs) and dict(f["teachers/ani1x"].attrs) == dict(g["teachers/ani1x"].attrs)
    with h5py.File(packed) as f:
        for key in ("hessian", "forces"):
            data = f["teachers/ani1x"][key]
            assert data.compression == compression and data.shuffle and data.chunks is not None
        if compression == "gzip":  # the Hessians really shrank (ANI-1x float32 entries: about 0.9×)
            hessian = f["teachers/ani1x/hessian"]
            assert hessian.id.get_storage_size() < hessian.nbytes
    mtime = packed.stat().st_mtime_ns
    assert compress_store(packed, compression)["bytes_after"] == sizes["bytes_after"]  # nothing left to pack
    assert packed.stat().st_mtime_ns == mtime


def test_unfinished_teacher_is_refused_and_the_store_left_alone(tmp_path, ani_teacher):
    path = labelled(tmp_path, ani_teacher, indices=np.array([0, 2]))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"teacher 'ani1x' has 2/6 structures labelled; finish precompute"):
        compress_store(path, "gzip")
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="unknown compression"):
        compress_store(path, "zstd")


def test_interrupted_compression_leaves_the_store_as_it_was(tmp_path, ani_teacher, monkeypatch):
    path = labelled(tmp_path, ani_teacher)
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_compression, "_copy_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        compress_store(path, "gzip")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no partial file left behind


def test_a_packed_store_takes_new_teachers_and_packs_them_again(tmp_path, ani_teacher):
    from hessdistill.teachers.ani import ANITeacher

    path = labelled(tmp_path, ani_teacher)
    compress_store(path, "gzip")
    reference = labelled(tmp_path, ani_teacher, name="reference.h5", layout="upper", dtype="float16")
    second = ANITeacher(ensemble_size=8, name="ani1x_fp16")  # the same model under another group name
    with HessianStore(path, "a") as store:
        precompute_teacher(store, second, layout="upper", dtype="float16", progress=False)
        assert store.teacher_group("ani1x_fp16")["hessian"].compression is None  # preallocated: kill-safe
    compress_store(path, "gzip")
    with h5py.File(path) as f:
        assert f["teachers/ani1x_fp16/hessian"].compression == "gzip"
    with HessianStore(path) as a, HessianStore(reference) as b:
        for i in range(len(a)):
            np.testing.assert_array_equal(a.hessian("ani1x_fp16", i), b.hessian("ani1x", i))


def test_precompute_cli_compresses_the_finished_store(tmp_path, ani_teacher):
    store = tmp_path / "s.h5"
    write_structures(store, label_with(ani_teacher, [rattled(n, seed=k) for k, n in enumerate(MOLECULES)]))
    plain = tmp_path / "plain.h5"
    shutil.copy(store, plain)
    run(precompute_config(plain))
    result = run(precompute_config(store, "storage.compression=gzip"))
    assert result["computed"] == len(MOLECULES) and "bytes_after" in result  # (a 6-molecule file: chunk overhead)
    with h5py.File(store) as f:
        assert f["teachers/ani1x/hessian"].compression == "gzip"
    assert_same_labels(plain, store)
    # sharded runs are packed when merged
    sharded = tmp_path / "sharded.h5"
    write_structures(sharded, label_with(ani_teacher, [rattled(n, seed=k) for k, n in enumerate(MOLECULES)]))
    for i in range(2):
        assert "bytes_after" not in run(precompute_config(sharded, f"shard={i}/2", "storage.compression=lzf"))
    run(precompute_config(sharded, "merge_shards=2", "storage.compression=lzf"))
    with h5py.File(sharded) as f:
        assert f["teachers/ani1x/hessian"].compression == "lzf"
    assert_same_labels(plain, sharded)


def test_reads_of_large_blocks_row_by_row_match_whole_block_reads(labelled_store, monkeypatch):
    from hessdistill.data import store as store_module

    with HessianStore(labelled_store) as store:
        whole = [store.hessian_rows("ani1x", i, [3, 0, 5]) for i in range(len(store))]
    monkeypatch.setattr(store_module, "BLOCK_READ", 0)
    with HessianStore(labelled_store) as store:
        for i in range(len(store)):
            np.testing.assert_array_equal(store.hessian_rows("ani1x", i, [3, 0, 5]), whole[i])
        # cached handles do not travel: a pickled store (a spawned DataLoader worker) opens its own
        clone = pickle.loads(pickle.dumps(store))
        assert clone._readers == {} and clone._file is None
        np.testing.assert_array_equal(clone.hessian_rows("ani1x", 1, [3, 0, 5]), whole[1])
        clone.close()
