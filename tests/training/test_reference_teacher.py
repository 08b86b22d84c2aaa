"""Distillation without DFT (``reference=teacher``): a structure file with no energies or forces becomes a store, the
teacher labels it, and a student trains on the teacher's energies and forces alone (distill=undistilled) or with its
Hessian rows too (distill=hessian); the targets are the teacher's labels and every report says so."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch

from conftest import STORE_MOLECULES, compose_config, label_with, make_batch, rattled
from hessdistill.data.labels import OnlineLabels, StoredLabels, check_reference
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import InvalidStructureError

TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0",
        "trainer.max_epochs=2", "subset.batch_size=4", "subset.split=[0.5,0.25,0.25]", "rows=2", "deploy.enabled=false"]


def unlabelled_molecules() -> list:
    return [rattled(name, seed=10 * k + r) for k, name in enumerate(STORE_MOLECULES) for r in range(3)]


@pytest.fixture(scope="module")
def structure_file(tmp_path_factory):
    """12 rattled molecules in an extxyz file with positions only: no energy, no forces."""
    path = tmp_path_factory.mktemp("plain") / "plain.extxyz"
    ase.io.write(path, unlabelled_molecules(), format="extxyz")
    assert "energy" not in path.read_text()
    return path


def subset_overrides(structure_file, store):
    return [f"subset.source.path={structure_file}", f"subset.store={store}", "subset.name=plain"]


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory, structure_file):
    """The file's structures labelled by ANI-1x through ``hessdistill-precompute reference=teacher``."""
    from hessdistill.cli.precompute import run

    store = tmp_path_factory.mktemp("store") / "plain.h5"
    run(compose_config("precompute", [*subset_overrides(structure_file, store), "reference=teacher",
                                      "batch_size=4"]))
    return store


def test_a_store_without_labels_is_for_reference_teacher_only(structure_file, teacher_store, tmp_path):
    from hessdistill.data.subset import build_store

    cfg = compose_config("precompute", subset_overrides(structure_file, tmp_path / "dft.h5"))
    with pytest.raises(InvalidStructureError, match=r"plain.extxyz\[frame 0\]: missing reference energy"):
        build_store(cfg.subset)  # reference=dft (the default) still requires labels
    with HessianStore(teacher_store) as store:
        assert len(store) == 12 and store.attributes["unlabelled_structures"] == 12
        s = store.structure(5)
        assert s.energy is None and s.forces is None and store.teacher_done("ani1x").all()
        check_reference("teacher", store)
        with pytest.raises(ValueError) as info:
            check_reference("dft", store)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(f"{teacher_store}: 12 of its 12 structures have no reference energy or "
                                          f"forces; train with reference=teacher")
        with pytest.raises(ValueError, match="reference must be one of"):
            check_reference("xtb", store)
    from hessdistill.cli.train import run

    with pytest.raises(ValueError, match=r"reference must be one of \('dft', 'teacher'\), got 'xtb'"):
        run(compose_config("train", ["experiment=demo", "reference=xtb", *TINY, f"logger.0.save_dir={tmp_path}",
                                     *subset_overrides(structure_file, tmp_path / "x.h5")]), str(tmp_path / "run"))
    assert not (tmp_path / "x.h5").exists()  # refused before a store is built from the file


def test_targets_and_energy_scale_are_the_teachers(teacher_store, ani_teacher, tmp_path):
    from hessdistill.data.datamodule import StoreDataModule

    split = (0.5, 0.25, 0.25)
    dm = StoreDataModule(str(teacher_store), labels=StoredLabels("ani1x", as_reference=True), rows=2, batch_size=6,
                         split=split, cutoff=4.0)
    batch = next(iter(dm.train_dataloader()))
    assert not hasattr(batch, "teacher_energy") and not hasattr(batch, "teacher_forces")
    with HessianStore(teacher_store) as store:
        labels = [store.teacher_labels("ani1x", int(i)) for i in batch.idx]
    torch.testing.assert_close(batch.energy, torch.tensor([e for e, _ in labels], dtype=batch.energy.dtype))
    torch.testing.assert_close(batch.forces, torch.as_tensor(np.concatenate([f for _, f in labels]),
                                                             dtype=batch.forces.dtype))
    assert batch.teacher_rows.shape == (2, batch.pos.shape[0], 3)
    # the energy scale: the same fit as a store whose reference labels were the teacher's all along
    relabelled = tmp_path / "relabelled.h5"
    write_structures(relabelled, label_with(ani_teacher, unlabelled_molecules()))
    refs, rms = dm.energy_statistics()
    want, want_rms = HessianStore(relabelled).energy_statistics(dm.splits["train"])
    np.testing.assert_allclose(refs.numpy(), want, rtol=1e-9, atol=1e-9)
    # forces from the batched Hessian call vs single-structure calls: equal to float64 round-off of ANI
    assert rms == pytest.approx(want_rms, rel=1e-6) and abs(refs[8]) > 100  # O: ~ −2000 eV, not zero
    # an online teacher standing in for the reference gives the same statistics and labels
    online = OnlineLabels(ani_teacher, as_reference=True)
    online_refs, online_rms = online.reference_statistics(dm.store, dm.splits["train"])
    np.testing.assert_allclose(online_refs, want, rtol=1e-9, atol=1e-9)
    plain = make_batch([dm.store.structure(int(i)).to_atoms() for i in batch.idx])
    labelled = online.label_batch(plain)
    torch.testing.assert_close(labelled.energy, torch.tensor([e for e, _ in labels], dtype=torch.float64),
                               rtol=0, atol=1e-6)
    assert not hasattr(labelled, "teacher_energy")


@pytest.mark.parametrize("distill", ["undistilled", "hessian"])
def test_train_on_teacher_labels_alone_end_to_end(distill, structure_file, teacher_store, tmp_path, monkeypatch):
    from hessdistill.cli.evaluate import run as evaluate
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["experiment=demo", f"distill={distill}", "reference=teacher",
                                   *subset_overrides(structure_file, teacher_store), *TINY,
                                   f"logger.0.save_dir={tmp_path / 'logs'}"])
    result = run(cfg, str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["reference"] == "teacher" and written["teacher"] == "ani1x" and written["distill"] == distill
    test = written["test"]
    assert np.isfinite(test["test/force_mae"]) and test["test/force_mae"] > 0
    assert test["test/hessian_mae"] > 0  # both students' Hessian rows are judged against the teacher's
    assert not any(key.startswith("test/teacher_") for key in test)  # the teacher is the reference, not a rival
    assert result["final_weights"].get("hessian", 0.0) == (3.0 if distill == "hessian" else 0.0)
    if distill == "hessian":
        evaluation = compose_config("evaluate", [f"run={tmp_path / 'run'}", "speed.enabled=false",
                                                 "md.enabled=false", "relax.enabled=false", "spectra.enabled=false"])
        out = evaluate(evaluation, str(tmp_path / "eval"))
        assert out["reference"] == "teacher" and out["accuracy"]["force_mae"] > 0
        assert "## Accuracy against the teacher ani1x" in (tmp_path / "eval" / "metrics.md").read_text()


def test_dft_reference_on_an_unlabelled_store_is_refused_before_training(structure_file, teacher_store, tmp_path):
    from hessdistill.cli.train import run

    cfg = compose_config("train", ["experiment=demo", *subset_overrides(structure_file, teacher_store), *TINY,
                                   f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match="have no reference energy or forces; train with reference=teacher"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_one_command_names_the_teacher_step_it_needs(structure_file, tmp_path):
    """hessdistill-train reference=teacher on a fresh file builds the store (without labels) and names the precompute
    command that labels it; force KD, which would repeat the force term, is refused."""
    from hessdistill.cli.train import run

    store = tmp_path / "fresh.h5"
    cfg = compose_config("train", ["experiment=demo", "reference=teacher", *subset_overrides(structure_file, store),
                                   *TINY, f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(StoreError, match=r"run `hessdistill-precompute teacher=ani1x subset=plain reference=teacher`"):
        run(cfg, str(tmp_path / "run"))
    assert HessianStore(store).attributes["unlabelled_structures"] == 12


def test_force_kd_is_refused_with_the_reason(structure_file, teacher_store, tmp_path):
    from hessdistill.cli.train import run

    cfg = compose_config("train", ["experiment=demo", "distill=force_kd", "reference=teacher",
                                   *subset_overrides(structure_file, teacher_store), *TINY,
                                   f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match="reference=teacher the energy and force terms already target the teacher"):
        run(cfg, str(tmp_path / "run"))
