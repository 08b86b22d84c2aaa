"""Training: a tiny distillation run learns, the λ_KD halving callback, and the Hydra CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from hessdistill.cli.config_path import CONFIG_DIR
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.store import write_structures
from hessdistill.training.callbacks import HalveKDWeight
from hessdistill.training.module import DistillModule, LossWeights

TINY_STUDENT = {"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2, "num_rbf": 8,
                "cutoff": 4.0}
TINY_OVERRIDES = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]


class EpochLosses(L.Callback):
    """Mean training loss, and mean Hessian-KD term, of every epoch."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.kd: list[float] = []
        self._batch: list[float] = []
        self._kd: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch.append(float(outputs["loss"]))
        self._kd.append(float(trainer.callback_metrics["train/hessian"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(sum(self._batch) / len(self._batch))
        self.kd.append(sum(self._kd) / len(self._kd))
        self._batch, self._kd = [], []


def tiny_trainer(max_epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, inference_mode=False, logger=False, enable_checkpointing=False,
                     accelerator="cpu", devices=1, callbacks=list(callbacks), enable_progress_bar=False,
                     enable_model_summary=False)


@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
def test_tiny_hessian_distillation_run_learns(labelled_store, force_mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything Lightning writes lands in tmp_path
    L.seed_everything(0)
    dm = StoreDataModule(str(labelled_store), teacher="ani1x", rows=2, batch_size=4, eval_batch_size=8,
                         split=(0.75, 0.25, 0.0), cutoff=4.0)
    module = DistillModule({**TINY_STUDENT, "force_mode": force_mode},
                           weights={"energy": 1.0, "forces": 10.0, "hessian": 1.0}, lr=5e-3)
    module.student.set_energy_statistics(*dm.energy_statistics())
    losses = EpochLosses()
    trainer = tiny_trainer(15, [losses])
    (before,) = trainer.validate(module, datamodule=dm, verbose=False)
    trainer.fit(module, datamodule=dm)
    (after,) = trainer.validate(module, datamodule=dm, verbose=False)

    assert len(losses.epochs) == 15
    assert sum(losses.epochs[-3:]) / 3 < 0.5 * losses.epochs[0]
    assert sum(losses.kd[-3:]) / 3 < 0.5 * losses.kd[0]
    assert after["val/loss_ef"] < 0.5 * before["val/loss_ef"]
    assert after["val/hessian_mae"] < 0.8 * before["val/hessian_mae"]
    assert before["val/teacher_loss_ef"] == 0.0  # the store's reference labels are the teacher's own


def test_training_step_includes_every_weighted_term(labelled_store):
    L.seed_everything(0)
    dm = StoreDataModule(str(labelled_store), teacher="ani1x", rows=2, batch_size=4, split=(1.0, 0.0, 0.0),
                         cutoff=4.0)
    batch = next(iter(dm.train_dataloader()))
    weights = {"energy": 2.0, "forces": 3.0, "hessian": 5.0, "energy_grad": 7.0, "force_kd": 11.0}
    module = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, weights=weights)
    module.student.set_energy_statistics(*dm.energy_statistics())
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    loss = module.training_step(batch, 0)
    terms = {k: logged[f"train/{k}"] for k in weights}
    assert all(v > 0 for v in terms.values())
    assert float(loss) == pytest.approx(sum(weights[k] * terms[k] for k in weights), rel=1e-5)
    # the teacher is the reference here, so force KD equals the force term
    assert terms["force_kd"] == pytest.approx(terms["forces"], rel=1e-6)
    # the energy-gradient term is meaningless for a conservative student and is switched off
    conservative = DistillModule({**TINY_STUDENT, "force_mode": "conservative"}, weights=weights)
    assert conservative.weights.energy_grad == 0.0


# ---- λ_KD halving ------------------------------------------------------------------------------------------
def halving_setup(student: float, teacher: float, sanity: bool = False, hessian: float = 400.0):
    module = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, weights={"hessian": hessian})
    trainer = SimpleNamespace(sanity_checking=sanity, callback_metrics={
        "val/loss_ef": torch.tensor(student), "val/teacher_loss_ef": torch.tensor(teacher)})
    return module, trainer


def test_halve_kd_weight_halves_once_when_student_beats_teacher():
    callback = HalveKDWeight(metric="loss_ef", margin=0.0, max_halvings=1)
    module, trainer = halving_setup(student=3.0, teacher=2.0)
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 400.0  # student worse than teacher: unchanged

    trainer.sanity_checking = True
    trainer.callback_metrics["val/loss_ef"] = torch.tensor(1.0)
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 400.0  # sanity-check validation never counts

    trainer.sanity_checking = False
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 200.0
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 200.0  # at most max_halvings
    assert callback.state_dict() == {"halvings": 1}


def test_halve_kd_weight_margin_and_equality():
    callback = HalveKDWeight(metric="force_mae", margin=0.05, max_halvings=2)
    module = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, weights={"hessian": 100.0})
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={
        "val/force_mae": torch.tensor(10.6), "val/teacher_force_mae": torch.tensor(10.0)})
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 100.0  # 10.6 > 1.05 · 10
    trainer.callback_metrics["val/force_mae"] = torch.tensor(10.5)
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 50.0  # within 5 % (≤)
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 25.0
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 25.0
    # missing metrics or a run without KD leave everything alone
    off = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, weights={"hessian": 0.0})
    HalveKDWeight().on_validation_end(trainer, off)
    assert off.weights.hessian == 0.0


def test_halve_kd_weight_state_restores_lambda_on_resume():
    callback = HalveKDWeight(max_halvings=3)
    module, trainer = halving_setup(student=1.0, teacher=2.0)
    callback.on_validation_end(trainer, module)
    callback.on_validation_end(trainer, module)
    assert module.weights.hessian == 100.0
    state = callback.state_dict()

    resumed = HalveKDWeight(max_halvings=3)
    resumed.load_state_dict(state)
    fresh_module, _ = halving_setup(student=1.0, teacher=2.0)
    assert fresh_module.weights.hessian == 400.0
    resumed.on_fit_start(trainer, fresh_module)  # a resumed run continues with the halved λ_KD
    assert fresh_module.weights.hessian == 100.0
    assert LossWeights(**fresh_module.hparams.weights).hessian == 400.0  # the configured value is kept


# ---- the Hydra CLI -----------------------------------------------------------------------------------------
def compose_train(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def test_cli_run_writes_metrics_json(labelled_store, tmp_path, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_train(["experiment=demo", f"subset.store={labelled_store}", "trainer.max_epochs=2",
                         "subset.batch_size=4", "subset.split=[0.5,0.25,0.25]", "subset.rows=2",
                         f"logger.0.save_dir={tmp_path / 'logs'}", *TINY_OVERRIDES])
    assert cfg.distill.name == "hessian" and cfg.distill.weights.hessian == cfg.subset.weights.hessian
    out = tmp_path / "run"
    result = run(cfg, str(out))
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["epochs"] == 2 and written["teacher"] == "ani1x" and written["distill"] == "hessian"
    test = written["test"]
    for key in ("test/loss_ef", "test/energy_mae", "test/force_mae", "test/hessian_mae", "test/teacher_force_mae"):
        assert key in test and test[key] == test[key]  # present and not NaN
    assert test["test/force_mae"] > 0 and test["test/hessian_mae"] > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and "averaging_state" in last  # the final epoch's (EMA) weights, not the best epoch's
    assert list((tmp_path / "logs").rglob("metrics.csv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "run"]  # nothing written elsewhere


@pytest.mark.parametrize("distill", ["undistilled", "force_kd", "hessian"])
def test_distill_overrides_compose(distill):
    cfg = compose_train(["experiment=demo", f"distill={distill}", "distill.lambda_kd=100"]
                        if distill == "hessian" else ["experiment=demo", f"distill={distill}"])
    w = cfg.distill.weights
    assert cfg.distill.name == distill and cfg.run_name == f"demo_hcno-{distill}"
    assert w.energy == cfg.subset.weights.energy and w.forces == cfg.subset.weights.forces
    if distill == "hessian":
        assert w.hessian == 100.0 and cfg.distill.rows == cfg.subset.rows >= 1
    else:
        assert w.hessian == 0.0 and cfg.distill.rows == 0
    assert w.force_kd == (cfg.subset.weights.forces if distill == "force_kd" else 0.0)
    assert cfg.student.hidden_channels == 64 and cfg.trainer.inference_mode is False  # experiment=demo applied


def test_cli_refuses_kd_without_teacher_labels_or_rows(tmp_path, labelled_store):
    from conftest import rattled
    from hessdistill.cli.train import run
    from hessdistill.data.structures import Structure
    import numpy as np

    unlabelled = tmp_path / "plain.h5"
    s = Structure.from_atoms(rattled("H2O"))
    s.energy, s.forces = -2000.0, np.zeros((3, 3))
    write_structures(unlabelled, [s, s, s, s])
    cfg = compose_train(["experiment=demo", f"subset.store={unlabelled}", f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no complete labels from teacher 'ani1x'.*hessdistill-precompute"):
        run(cfg, str(tmp_path / "a"))
    cfg = compose_train(["experiment=demo", f"subset.store={labelled_store}", "distill.rows=0",
                         f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match="rows >= 1"):
        run(cfg, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_multirun_subprocess(labelled_store, tmp_path):
    """The real entry point: ``--multirun distill=undistilled,force_kd`` writes one metrics.json per job."""
    sweep = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "hessdistill.cli.train", "--multirun", "experiment=demo",
           "distill=undistilled,force_kd", f"subset.store={labelled_store}", "trainer.max_epochs=1",
           "subset.batch_size=8", f"hydra.sweep.dir={sweep}", *TINY_OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}
    assert sorted(metrics) == ["demo_hcno-force_kd-1", "demo_hcno-undistilled-0"]
    for name, m in metrics.items():
        assert m["distill"] in name and m["epochs"] == 1 and m["lambda_kd_final"] == 0.0
        assert "test/hessian_mae" in m["test"]  # the teacher's rows are still evaluated when present
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun"]


def test_resume_from_checkpoint_reproduces_the_metric_curve(labelled_store, tmp_path, monkeypatch):
    """4 epochs in one go == 2 epochs, stop, resume from last.ckpt to 4 (order, rows, EMA, optimiser, λ_KD)."""
    import csv

    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)

    def cfg(out, epochs, *extra):
        return compose_train(["experiment=demo", f"subset.store={labelled_store}", f"trainer.max_epochs={epochs}",
                              "subset.batch_size=4", "subset.split=[0.5,0.25,0.25]", "subset.rows=2",
                              f"logger.0.save_dir={tmp_path / out}", "ema_decay=0.9",
                              *TINY_OVERRIDES, *extra])

    def val_curve(out):
        (path,) = (tmp_path / out).rglob("metrics.csv")
        rows = [r for r in csv.DictReader(open(path)) if r.get("val/loss_ef")]
        return {int(r["epoch"]): float(r["val/loss_ef"]) for r in rows}

    straight = run(cfg("a", 4), str(tmp_path / "a"))
    run(cfg("b", 2), str(tmp_path / "b"))
    resumed = run(cfg("c", 4, f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"), str(tmp_path / "c"))
    a, c = val_curve("a"), val_curve("c")
    assert sorted(a) == [0, 1, 2, 3] and sorted(c) == [2, 3]  # the resumed run starts at epoch 2
    for epoch in (2, 3):
        assert c[epoch] == pytest.approx(a[epoch], rel=1e-5)
    for key, value in straight["test"].items():
        assert resumed["test"][key] == pytest.approx(value, rel=1e-5), key
    assert a[3] != a[2]  # the curve moves, so equality is not trivial
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["packages"]["torch"] == torch.__version__.split("+")[0] or info["packages"]["torch"] == torch.__version__
    assert "git_commit" in info and "argv" in info
