"""Training: a tiny distillation run learns, the λ_KD halving callback, and the Hydra CLI end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException

from conftest import compose_config, distill_terms
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.labels import StoredLabels
from hessdistill.data.store import StoreError, write_structures
from hessdistill.evaluation.sweeps import summarize
from hessdistill.training.callbacks import HalveKDWeight
from hessdistill.training.module import DistillModule

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


@pytest.mark.parametrize("force_mode, row_strategy", [("direct", "loop"), ("conservative", "loop"), ("direct", "fd"),
                                                       ("conservative", "fd_central"), ("direct", "jvp")])
def test_tiny_hessian_distillation_run_learns(labelled_store, force_mode, row_strategy, tmp_path, monkeypatch):
    """Every row strategy trains; validation scores exact VJP rows whichever computed the training rows."""
    monkeypatch.chdir(tmp_path)  # anything Lightning writes lands in tmp_path
    L.seed_everything(0)
    dm = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=2, batch_size=4, eval_batch_size=8,
                         split=(0.75, 0.25, 0.0), cutoff=4.0)
    module = DistillModule({**TINY_STUDENT, "force_mode": force_mode},
                           distill_terms(energy=1.0, forces=10.0, hessian=1.0, energy_grad=0.0),
                           optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-3},
                           row_strategy=row_strategy)
    module.prepare(dm)
    losses = EpochLosses()
    trainer = tiny_trainer(15, [losses])
    (before,) = trainer.validate(module, datamodule=dm, verbose=False)
    trainer.fit(module, datamodule=dm)
    (after,) = trainer.validate(module, datamodule=dm, verbose=False)

    assert len(losses.epochs) == 15
    # a direct student's jvp/fd rows are Jacobian columns: another objective, whose 15-epoch curve is noisier
    falls = 0.75 if force_mode == "direct" and row_strategy in ("fd", "jvp") else 0.5
    assert sum(losses.epochs[-3:]) / 3 < falls * losses.epochs[0]
    assert sum(losses.kd[-3:]) / 3 < falls * losses.kd[0]
    assert after["val/loss_ef"] < 0.5 * before["val/loss_ef"]
    assert after["val/hessian_mae"] < 0.8 * before["val/hessian_mae"]
    assert before["val/teacher_loss_ef"] == 0.0  # the store's reference labels are the teacher's own


def test_training_step_includes_every_weighted_term(labelled_store):
    L.seed_everything(0)
    dm = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=2, batch_size=4,
                         split=(1.0, 0.0, 0.0), cutoff=4.0)
    batch = next(iter(dm.train_dataloader()))
    weights = {"energy": 2.0, "forces": 3.0, "hessian": 5.0, "energy_grad": 7.0}
    terms = {**distill_terms("hessian", **weights),
             "force_kd": {**distill_terms("force_kd")["force_kd"], "weight": 11.0}}
    module = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, terms)
    module.prepare(dm)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    loss = module.training_step(batch, 0)
    weights["force_kd"] = 11.0
    values = {k: logged[f"train/{k}"] for k in weights}
    assert all(v > 0 for v in values.values())
    assert float(loss) == pytest.approx(sum(weights[k] * values[k] for k in weights), rel=1e-5)
    # the teacher is the reference here, so force KD equals the force term
    assert values["force_kd"] == pytest.approx(values["forces"], rel=1e-6)


def test_energy_gradient_term_is_switched_off_for_conservative_students(labelled_store, caplog):
    terms = distill_terms("undistilled", energy_grad=7.0)
    for force_mode, expected in (("direct", 7.0), ("conservative", 0.0)):
        module = DistillModule({**TINY_STUDENT, "force_mode": force_mode}, terms)
        module.loss.setup(module.student, None)
        assert module.loss.weight("energy_grad") == expected
    assert "direct-force students only" in caplog.text


def test_loss_terms_declare_what_they_need():
    hessian = DistillModule(TINY_STUDENT, distill_terms("hessian", rows=3)).loss
    assert hessian.targets == {"energy", "forces", "teacher_rows"} and hessian.rows == 3
    assert "force_jacobian_rows" in hessian.predictions
    undistilled = DistillModule(TINY_STUDENT, distill_terms("undistilled")).loss
    assert undistilled.targets == {"energy", "forces"} and undistilled.rows == 0
    assert DistillModule(TINY_STUDENT, distill_terms("n2n")).loss.targets >= {"teacher_node_features"}
    with pytest.raises(InstantiationException, match="unknown loss 'nope'"):
        DistillModule(TINY_STUDENT, {"x": {**distill_terms("undistilled")["forces"], "loss": "nope"}})
    with pytest.raises(InstantiationException, match="unknown target 'teacher_hessian'"):
        DistillModule(TINY_STUDENT, {"x": {**distill_terms("undistilled")["forces"], "target": "teacher_hessian"}})


# ---- λ_KD halving ------------------------------------------------------------------------------------------
def halving_setup(student: float, teacher: float, sanity: bool = False, hessian: float = 400.0):
    module = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, distill_terms(hessian=hessian))
    trainer = SimpleNamespace(sanity_checking=sanity, is_global_zero=True, current_epoch=0, callback_metrics={
        "val/loss_ef": torch.tensor(student), "val/teacher_loss_ef": torch.tensor(teacher)})
    return module, trainer


def test_halve_kd_weight_halves_once_when_student_beats_teacher():
    callback = HalveKDWeight(metric="loss_ef", margin=0.0, max_halvings=1)
    module, trainer = halving_setup(student=3.0, teacher=2.0)
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 400.0  # student worse than teacher: unchanged

    trainer.sanity_checking = True
    trainer.callback_metrics["val/loss_ef"] = torch.tensor(1.0)
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 400.0  # sanity-check validation never counts

    trainer.sanity_checking = False
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 200.0
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 200.0  # at most max_halvings
    assert callback.state_dict() == {"halvings": 1}


def test_halve_kd_weight_margin_and_equality():
    callback = HalveKDWeight(metric="force_mae", margin=0.05, max_halvings=2)
    module = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, distill_terms(hessian=100.0))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=0, callback_metrics={
        "val/force_mae": torch.tensor(10.6), "val/teacher_force_mae": torch.tensor(10.0)})
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 100.0  # 10.6 > 1.05 · 10
    trainer.callback_metrics["val/force_mae"] = torch.tensor(10.5)
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 50.0  # within 5 % (≤)
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 25.0
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 25.0
    # missing metrics or a run without KD leave everything alone
    off = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, distill_terms(hessian=0.0))
    HalveKDWeight().on_validation_end(trainer, off)
    assert off.loss.weight("hessian") == 0.0
    undistilled = DistillModule({**TINY_STUDENT, "force_mode": "direct"}, distill_terms("undistilled"))
    HalveKDWeight().on_validation_end(trainer, undistilled)  # no such term: nothing to halve
    assert "hessian" not in undistilled.loss.terms


def test_halve_kd_weight_state_restores_lambda_on_resume():
    callback = HalveKDWeight(max_halvings=3)
    module, trainer = halving_setup(student=1.0, teacher=2.0)
    callback.on_validation_end(trainer, module)
    callback.on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 100.0
    state = callback.state_dict()

    resumed = HalveKDWeight(max_halvings=3)
    resumed.load_state_dict(state)
    fresh_module, _ = halving_setup(student=1.0, teacher=2.0)
    assert fresh_module.loss.weight("hessian") == 400.0
    resumed.on_fit_start(trainer, fresh_module)  # a resumed run continues with the halved λ_KD
    assert fresh_module.loss.weight("hessian") == 100.0
    assert fresh_module.loss.initial_weights["hessian"] == 400.0  # the configured value is kept


# ---- the Hydra CLI -----------------------------------------------------------------------------------------
def compose_train(overrides):
    return compose_config("train", overrides)


def test_cli_run_writes_metrics_json(labelled_store, tmp_path, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_train(["experiment=demo", f"subset.store={labelled_store}", "trainer.max_epochs=2",
                         "subset.batch_size=4", "subset.split=[0.5,0.25,0.25]", "rows=2",
                         f"logger.0.save_dir={tmp_path / 'logs'}", *TINY_OVERRIDES])
    assert cfg.distill.name == "hessian" and cfg.distill.terms.hessian.weight == cfg.weights.hessian == 3.0
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


@pytest.mark.parametrize("distill", ["undistilled", "force_kd", "hessian", "n2n", "a2a"])
def test_distill_overrides_compose(distill):
    cfg = compose_train(["experiment=demo", f"distill={distill}", "weights.hessian=100", "weights.forces=50"])
    terms = cfg.distill.terms
    assert cfg.distill.name == distill and cfg.run_name == f"demo_hcno/painn-{distill}"  # class: no Hydra record
    assert terms.energy.weight == 5.0 and terms.forces.weight == 50.0 and terms.energy_grad.weight == 5.0
    assert ("hessian" in terms) == (distill == "hessian") and ("force_kd" in terms) == (distill == "force_kd")
    if distill == "hessian":
        assert terms.hessian.weight == 100.0 and terms.hessian.rows == cfg.rows == 4
        assert cfg.callbacks.halve_kd.max_halvings == 1
    if distill == "force_kd":
        assert terms.force_kd.weight == 50.0  # force KD takes the force weight
    assert len(cfg.distill.plugins) == (distill == "a2a")
    assert cfg.student.hidden_channels == 64 and cfg.callbacks.ema.decay == 0.99  # experiment=demo applied
    assert cfg.datamodule.cutoff == cfg.student.cutoff  # the graph is built at the student's cutoff


def test_cli_refuses_kd_without_teacher_labels(tmp_path):
    import numpy as np

    from conftest import rattled
    from hessdistill.cli.train import run
    from hessdistill.data.structures import Structure

    unlabelled = tmp_path / "plain.h5"
    s = Structure.from_atoms(rattled("H2O"))
    s.energy, s.forces = -2000.0, np.zeros((3, 3))
    write_structures(unlabelled, [s, s, s, s])
    cfg = compose_train(["experiment=demo", f"subset.store={unlabelled}", f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(StoreError, match="teacher 'ani1x' has labels for 0/4 structures; run `hessdistill-precompute"):
        run(cfg, str(tmp_path / "a"))
    cfg = compose_train(["experiment=demo", f"subset.store={unlabelled}", "teacher_mode=online", "distill=n2n",
                         f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"need \['teacher_node_features'\], which this label source does not"):
        run(cfg, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_multirun_subprocess(labelled_store, tmp_path):
    """The real entry point: ``--multirun distill=undistilled,force_kd`` writes one metrics.json per job, in folders
    named by student and what the sweep varies; it shows each epoch's validation MAE, ends each run with a table in
    units, and hessdistill-summarize tables the sweep."""
    sweep = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "hessdistill.cli.train", "--multirun", "experiment=demo",
           "distill=undistilled,force_kd", f"subset.store={labelled_store}", "trainer.max_epochs=1",
           "subset.batch_size=8", f"hydra.sweep.dir={sweep}", *TINY_OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}
    # student-distill; the overrides set to one value (experiment, store, sizes) are not repeated in every name
    assert sorted(metrics) == ["painn_small-force_kd", "painn_small-undistilled"]
    assert len(re.findall(r"^epoch 1/1: loss \S+, val force MAE [\d.]+ meV/Å, val energy MAE [\d.]+ meV/atom",
                          proc.stdout, re.MULTILINE)) == 2
    assert proc.stdout.count("| force MAE (meV/Å)") == 2  # each run's closing table
    for name, m in metrics.items():
        assert m["distill"] in name and m["epochs"] == 1 and "hessian" not in m["final_weights"]
        assert "test/hessian_mae" in m["test"]  # the teacher's rows are still evaluated when present
    summary = summarize(sweep)
    assert summary.varied == ["distill"] and [g["distill"] for g in summary.groups] == ["force_kd", "undistilled"]
    for group in summary.groups:
        assert group["n"] == 1 and group["force_mae_mean"] == metrics[f"painn_small-{group['distill']}"]["test"][
            "test/force_mae"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun"]


def test_resume_from_checkpoint_reproduces_the_metric_curve(labelled_store, tmp_path, monkeypatch):
    """4 epochs in one go == 2 epochs, stop, resume from last.ckpt to 4 (order, rows, EMA, optimiser, λ_KD)."""
    import csv

    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)

    def cfg(out, epochs, *extra):
        return compose_train(["experiment=demo", f"subset.store={labelled_store}", f"trainer.max_epochs={epochs}",
                              "subset.batch_size=4", "subset.split=[0.5,0.25,0.25]", "rows=2",
                              f"logger.0.save_dir={tmp_path / out}", "callbacks.ema.decay=0.9",
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
    assert (info["packages"]["torch"] == torch.__version__.split("+")[0]
            or info["packages"]["torch"] == torch.__version__)
    assert "git_commit" in info and "argv" in info
