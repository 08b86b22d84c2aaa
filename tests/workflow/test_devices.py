"""The one ``device`` setting: how it resolves, and that every entry point runs its models and batches there. CPU
tests record where things are moved and run (so an entry point that ignores the setting fails them); the
``gpu``-marked tests repeat the checks on CUDA and compare with the CPU results."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch

from conftest import DeviceRecordingTeacher, compose_config, label_with, precompute_config, rattled
from hessdistill import devices
from hessdistill.data.store import HessianStore, write_structures

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_device_settings_resolve_or_are_refused_by_name(monkeypatch):
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='tpu' is not a device"):
        devices.resolve_device("tpu")
    with pytest.raises(ValueError, match="device='meta': hessdistill runs on cpu or cuda"):
        devices.resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda', but torch sees no CUDA device here"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:2', but only 2 CUDA device\(s\) are visible"):
        devices.resolve_device("cuda:2")
    # shard i of a sharded precompute takes GPU i % n with device=auto, or the device named
    assert [devices.shard_device("auto", i) for i in range(3)] == [torch.device("cuda", k) for k in (0, 1, 0)]
    assert devices.shard_device("cpu", 5) == torch.device("cpu")


@pytest.fixture
def recorded(monkeypatch):
    """Every ``resolve_device``/``shard_device`` setting an entry point asks for, answered with the CPU."""
    asked = []

    def fake(spec, *shard):
        asked.append((spec, *shard))
        return torch.device("cpu")

    for module in ("hessdistill.cli.precompute", "hessdistill.cli.evaluate", "hessdistill.cli.predict"):
        monkeypatch.setattr(f"{module}.resolve_device", fake, raising=False)
    monkeypatch.setattr("hessdistill.cli.precompute.shard_device", fake)
    DeviceRecordingTeacher.moves.clear()
    DeviceRecordingTeacher.batches.clear()
    return asked


def small_store(tmp_path, ani_teacher, name="s.h5"):
    path = tmp_path / name
    write_structures(path, label_with(ani_teacher, [rattled(n, seed=k) for k, n in enumerate(["H2O", "NH3", "CH4"])]))
    return path


def test_precompute_moves_the_teacher_and_its_batches_to_the_setting(tmp_path, ani_teacher, recorded):
    from hessdistill.cli.precompute import run

    store = small_store(tmp_path, ani_teacher)
    run(precompute_config(store, "device=cuda:1", "teacher._target_=conftest.DeviceRecordingTeacher"))
    assert recorded == [("cuda:1",)]
    assert DeviceRecordingTeacher.moves == [torch.device("cpu")]
    assert DeviceRecordingTeacher.batches and set(DeviceRecordingTeacher.batches) == {torch.device("cpu")}
    recorded.clear()
    run(precompute_config(store, "device=auto", "shard=2/3", "teacher._target_=conftest.DeviceRecordingTeacher"))
    assert ("auto", 2) in recorded  # shard 2 asks for its own device


def test_evaluate_and_predict_move_their_models_to_the_setting(tmp_path, labelled_store, recorded, monkeypatch):
    from hessdistill.cli import evaluate
    from hessdistill.cli.train import run as train

    monkeypatch.chdir(tmp_path)
    tiny = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
    subset = [f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]"]
    train(compose_config("train", ["experiment=demo", "trainer.max_epochs=1", f"logger.0.save_dir={tmp_path}",
                                   *subset, *tiny]), str(tmp_path / "run"))
    loaded = []
    real = evaluate.load_student
    monkeypatch.setattr(evaluate, "load_student",
                        lambda path, device, **opts: loaded.append(device) or real(path, device, **opts))
    cfg = compose_config("evaluate", [f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", *subset,
                                      "device=cuda:1", "teacher._target_=conftest.DeviceRecordingTeacher",
                                      "speed.enabled=false", "md.enabled=false", "relax.enabled=false",
                                      "spectra.enabled=false"])
    evaluate.run(cfg, str(tmp_path / "eval"))
    assert recorded == [("cuda:1",)] and loaded == [torch.device("cpu")]
    assert DeviceRecordingTeacher.moves == [torch.device("cpu")]
    # hessdistill-predict loads its student where device= says
    from hessdistill.cli import predict

    monkeypatch.setattr(predict, "load_student",
                        lambda path, device, **opts: loaded.append(device) or real(path, device, **opts))
    ase.io.write(tmp_path / "in.xyz", [rattled("H2O")])
    predict.run(compose_config("predict", [f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                           f"input={tmp_path / 'in.xyz'}", f"output={tmp_path / 'out.xyz'}",
                                           "device=cuda:0"]))
    assert recorded[-1] == ("cuda:0",) and loaded[-1] == torch.device("cpu")


def test_calculator_runs_where_it_is_told(ani_teacher):
    from hessdistill.integrations.ase_calculator import TorchCalculator

    calc = TorchCalculator(ani_teacher, device="cpu")
    assert calc.device == torch.device("cpu")
    atoms = rattled("H2O")
    atoms.calc = calc
    assert np.isfinite(atoms.get_forces()).all()


# ---- CUDA -------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@CUDA
def test_cuda_precompute_equals_the_cpu_store(tmp_path, ani_teacher):
    from hessdistill.cli.precompute import run

    cpu, cuda = small_store(tmp_path, ani_teacher, "cpu.h5"), small_store(tmp_path, ani_teacher, "cuda.h5")
    run(precompute_config(cpu, "device=cpu"))
    run(precompute_config(cuda, "device=cuda"))
    with HessianStore(cpu) as a, HessianStore(cuda) as b:
        for i in range(len(a)):
            np.testing.assert_allclose(a.hessian("ani1x", i), b.hessian("ani1x", i), atol=1e-4)
            np.testing.assert_allclose(a.teacher_labels("ani1x", i)[1], b.teacher_labels("ani1x", i)[1], atol=1e-8)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("teacher_mode", ["precomputed", "online"])
def test_cuda_training_and_evaluation(tmp_path, labelled_store, monkeypatch, teacher_mode):
    from hessdistill.cli.evaluate import run as evaluate
    from hessdistill.cli.train import run as train

    monkeypatch.chdir(tmp_path)
    subset = [f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]"]
    trained = train(compose_config("train", ["experiment=demo", "trainer=gpu", "trainer.max_epochs=2",
                                             f"teacher_mode={teacher_mode}", f"logger.0.save_dir={tmp_path}",
                                             "student.hidden_channels=16", "student.num_layers=2", *subset]),
                    str(tmp_path / "run"))
    assert trained["epochs"] == 2 and trained["test"]["test/hessian_mae"] > 0
    result = evaluate(compose_config("evaluate", [f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                                  *subset, "device=cuda", "md.count=1", "md.steps=20",
                                                  "md.nve_steps=20", "relax.count=1", "spectra.count=1",
                                                  "speed.max_batch=128"]), str(tmp_path / "eval"))
    assert result["accuracy"]["force_mae"] == pytest.approx(trained["test"]["test/force_mae"], rel=1e-3)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["speed"]["student"]["structures_per_s"] > 0


@pytest.mark.gpu
@CUDA
def test_cuda_calculator_equals_the_cpu_one(ani_teacher):
    from hessdistill.integrations.ase_calculator import TorchCalculator
    from hessdistill.teachers.ani import ANITeacher

    atoms = rattled("CH3OH")
    atoms.calc = TorchCalculator(ani_teacher)
    cpu = atoms.get_forces()
    atoms.calc = TorchCalculator(ANITeacher(), device="cuda")
    assert atoms.calc.device.type == "cuda"
    np.testing.assert_allclose(atoms.get_forces(), cpu, atol=1e-8)
