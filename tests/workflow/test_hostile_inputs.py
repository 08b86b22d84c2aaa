"""Hostile or unlucky inputs get one clear error, and nothing non-finite reaches a store or a metric: float16
overflow refused at write time, non-finite rows refused at read time, a diverging run stopped at its first
non-finite loss, an empty validation split refused before training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import compose_config
from hessdistill.data.store import HessianStore, StoreError


def test_float16_overflow_is_refused_at_write_time(tmp_path, labelled_store):
    path = tmp_path / "s.h5"
    shutil.copy(labelled_store, path)
    with HessianStore(path, "a") as store:
        n = store.n_atoms(0)
        store.create_teacher("half", {"teacher": "half"}, dtype="float16")
        huge = np.full((3 * n, 3 * n), 7.0e4)  # eV/Å², above float16's 65504
        with pytest.raises(StoreError, match=r"s.h5\[0\]: teacher half Hessian entries up to 7e\+04 eV/Å² do not "
                                             r"fit the store's float16 .*storage.dtype=float32"):
            store.write_teacher("half", 0, -1.0, np.zeros((n, 3)), huge)
        assert not store.teacher_done("half").any()  # nothing marked done


def test_non_finite_rows_marked_done_are_refused_at_read_time(tmp_path, labelled_store):
    path = tmp_path / "s.h5"
    shutil.copy(labelled_store, path)
    with HessianStore(path, "a") as store:  # a hostile file: NaN written past the store's checks
        h0 = int(store.file["teachers/ani1x/hessian_offsets"][2])
        store.file["teachers/ani1x/hessian"][h0 + 1] = np.nan
    with HessianStore(path) as store:
        np.testing.assert_array_equal(store.hessian_rows("ani1x", 1, [0]), store.hessian_rows("ani1x", 1, [0]))
        with pytest.raises(StoreError, match=r"s.h5\[2\]: teacher ani1x has non-finite Hessian entries in rows "
                                             r"\[0\] although they are marked done"):
            store.hessian_rows("ani1x", 2, [0])


def test_a_diverging_run_stops_at_its_first_non_finite_loss(tmp_path, labelled_store, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "trainer.max_epochs=3",
                                   "optimizer.lr=1.0e30", "student.hidden_channels=16", "student.num_layers=2",
                                   "subset.batch_size=4", f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at epoch \d+, step \d+ .*structures \["):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_empty_validation_split_is_refused_before_training(tmp_path, labelled_store, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "subset.split=[1.0,0.0,0.0]",
                                   f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"subset.split=\[1.0, 0.0, 0.0\] leaves the val split of its 16 structures "
                                         r"empty"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
