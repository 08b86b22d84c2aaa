"""Training to convergence (#28): Hessian-vector-product KD learns; the cosine schedule reaches its floor at the last
epoch and resumes identically; early stopping stops, and test_ckpt=best tests (and evaluates) the best checkpoint's
EMA weights; learning curves are read from the runs' CSV logs."""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.labels import StoredLabels
from hessdistill.training.module import DistillModule
from hessdistill.training.schedules import warmup_cosine, warmup_cosine_factor

TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]


def hvp_terms(**overrides) -> dict:
    cfg = compose_config("train", ["distill=hessian_hvp", *(f"{k}={v}" for k, v in overrides.items())])
    return OmegaConf.to_container(cfg.distill.terms, resolve=True)


@pytest.mark.parametrize("force_mode, row_strategy", [("direct", "loop"), ("conservative", "fd_central")])
def test_tiny_hvp_distillation_run_learns(labelled_store, force_mode, row_strategy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)
    terms = hvp_terms(probes=2, **{"weights.energy": 1.0, "weights.forces": 10.0, "weights.hessian": 1.0,
                                   "weights.energy_grad": 0.0})
    module = DistillModule({"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2,
                            "num_rbf": 8, "cutoff": 4.0, "force_mode": force_mode}, terms,
                           optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-3},
                           row_strategy=row_strategy)
    assert module.loss.probes == 2 and module.loss.rows == 0 and module.loss.targets >= {"teacher_hvp"}
    dm = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=module.loss.rows,
                         probes=module.loss.probes, batch_size=4, eval_batch_size=8, split=(0.75, 0.25, 0.0),
                         cutoff=4.0)
    module.prepare(dm)
    kd, steps = [], []

    class Record(L.Callback):  # the mean probe term of every epoch
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append(float(trainer.callback_metrics["train/hessian"]))

        def on_train_epoch_end(self, trainer, pl_module):
            kd.append(np.mean(steps))
            steps.clear()

    trainer = L.Trainer(max_epochs=12, inference_mode=False, logger=False, enable_checkpointing=False,
                        accelerator="cpu", callbacks=[Record()], enable_progress_bar=False, enable_model_summary=False)
    (before,) = trainer.validate(module, datamodule=dm, verbose=False)
    trainer.fit(module, datamodule=dm)
    (after,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert np.mean(kd[-3:]) < 0.75 * np.mean(kd[:3])  # the probe term falls (k = 2 probes: a noisy estimate)
    assert after["val/hessian_mae"] < 0.8 * before["val/hessian_mae"]  # and with it the exact rows' error


def test_probe_counts_are_checked_before_training():
    from hessdistill.cli.train import check_numbers

    check_numbers(compose_config("train", ["distill=hessian_hvp", "probes=0"]))
    with pytest.raises(ValueError, match=r"probes=1.5: expected an integer ≥ 0 \(probe vectors per structure\)"):
        check_numbers(compose_config("train", ["distill=hessian_hvp", "probes=1.5"]))


def test_cosine_factor_warms_up_and_reaches_its_floor_at_the_last_epoch():
    factors = [warmup_cosine_factor(e, 10, 2, 0.01) for e in range(12)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(factors[2:9], factors[3:10]))  # decays every epoch after the warmup
    assert factors[9] == pytest.approx(0.01) and factors[10:] == pytest.approx([0.01, 0.01])  # floor from e = 9
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = warmup_cosine(optimizer, epochs=5, warmup_epochs=0, min_lr=1e-3)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="needs epochs .* > warmup_epochs"):
        warmup_cosine(optimizer, epochs=3, warmup_epochs=2)
    with pytest.raises(ValueError, match="min_lr=1.0 must lie between 0 and the optimizer's lr"):
        warmup_cosine(optimizer, epochs=5, min_lr=1.0)


def csv_column(run_dir, column: str, steps_per_epoch: int | None = None) -> dict[int, float]:
    """epoch → a logged column of a run; steps_per_epoch: find the epoch from the step (the learning-rate monitor's
    rows carry no epoch)."""
    (path,) = run_dir.rglob("metrics.csv")
    return {int(r["step"]) // steps_per_epoch if steps_per_epoch else int(r["epoch"]): float(r[column])
            for r in csv.DictReader(open(path)) if r.get(column)}


def test_cosine_hvp_run_reaches_the_floor_and_resumes_identically(labelled_store, tmp_path, monkeypatch):
    """4 epochs in one go == 2 epochs, stop, resume to 4: the learning rates (a cosine with one warmup epoch ending at
    min_lr) and the HVP run's validation curve (probes seeded per epoch) are the same."""
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)

    def cfg(out, epochs, *extra):
        return compose_config("train", [
            "experiment=demo", f"subset.store={labelled_store}", f"trainer.max_epochs={epochs}",
            "subset.batch_size=4", "subset.split=[0.5,0.25,0.25]", "distill=hessian_hvp", "probes=2",
            "scheduler=cosine", "scheduler.epochs=4", "scheduler.warmup_epochs=1", "scheduler.min_lr=1e-5",
            f"logger.0.save_dir={tmp_path / out}", "callbacks.ema.decay=0.9", "deploy.enabled=false",
            "trainer.log_every_n_steps=1", *TINY, *extra])

    straight = run(cfg("a", 4), str(tmp_path / "a"))
    run(cfg("b", 2), str(tmp_path / "b"))
    resumed = run(cfg("c", 4, f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"), str(tmp_path / "c"))
    lr = csv_column(tmp_path / "a", "lr-AdamW", steps_per_epoch=2)  # 8 training structures, batches of 4
    assert [lr[e] for e in range(4)] == pytest.approx([5e-4, 1e-3, 1e-3 * 0.5 + 1e-5 * 0.5, 1e-5])
    assert csv_column(tmp_path / "c", "lr-AdamW", steps_per_epoch=2) == pytest.approx({2: lr[2], 3: lr[3]})
    a, c = csv_column(tmp_path / "a", "val/loss_ef"), csv_column(tmp_path / "c", "val/loss_ef")
    assert sorted(c) == [2, 3] and c == pytest.approx({2: a[2], 3: a[3]}, rel=1e-5)
    assert a[3] != a[2] and "train/hessian" in open(next((tmp_path / "a").rglob("metrics.csv"))).readline()
    for key, value in straight["test"].items():
        assert resumed["test"][key] == pytest.approx(value, rel=1e-5), key


def test_early_stopping_stops_and_tests_the_best_checkpoint(labelled_store, tmp_path, monkeypatch):
    """stopping=early: with min_delta so large that nothing counts as an improvement after the first validation, a
    patience of 1 stops after 2 of 10 epochs; the test metrics (and hessdistill-evaluate run=) are of best.ckpt's EMA
    weights. ``callbacks.best.mode=max`` makes the "best" checkpoint the worse epoch, so best ≠ last."""
    from hessdistill.cli.evaluate import with_training_run
    from hessdistill.cli.train import run
    from hessdistill.evaluation.accuracy import evaluate_split
    from hessdistill.evaluation.checkpoint import load_student

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", [
        "experiment=demo", f"subset.store={labelled_store}", "trainer.max_epochs=10", "subset.batch_size=4",
        "subset.split=[0.5,0.25,0.25]", "rows=2", "stopping=early", "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1e9", "+callbacks.best.mode=max", "callbacks.ema.decay=0.5",
        "optimizer.lr=0.01",
        f"logger.0.save_dir={tmp_path / 'logs'}", *TINY])
    out = tmp_path / "run"
    result = run(cfg, str(out))
    assert result["epochs"] == 2 and result["test_ckpt"] == "best"
    assert result["checkpoint"] == str(out / "checkpoints" / "best.ckpt")
    assert result["deployed"] is not None  # deployed from the tested checkpoint
    dm = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), split=(0.5, 0.25, 0.25), cutoff=4.0,
                         split_file=str(out / "splits.json"))
    mae = {name: evaluate_split(load_student(out / "checkpoints" / f"{name}.ckpt"), dm.dataset("test"), 32,
                                5.0, 100.0)["metrics"]["force_mae"] for name in ("best", "last")}
    assert abs(mae["best"] - mae["last"]) > 1e-3 * mae["last"]  # the check below tells them apart
    assert result["test"]["test/force_mae"] == pytest.approx(mae["best"], rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["checkpoint"].endswith("best.ckpt")
    evaluate, _ = with_training_run(compose_config("evaluate", [f"run={out}"]))
    assert evaluate.checkpoint == str(out / "checkpoints" / "best.ckpt")
    with pytest.raises(ValueError, match="test_ckpt='middle': choose one of last, best"):
        run(compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "test_ckpt=middle"]),
            str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_learning_curves_are_read_and_plotted(tmp_path):
    from hessdistill.evaluation.learning_curves import mean_curve, plot_learning_curves, read_curve

    for name, values in {"a": [9.0, 5.0, 4.0], "b": [8.0, 6.0, 2.0, 1.0]}.items():
        path = tmp_path / name / "csv" / "version_0" / "metrics.csv"
        path.parent.mkdir(parents=True)
        rows = [{"epoch": e, "step": e, "val/force_mae": v, "train/loss": ""} for e, v in enumerate(values)]
        rows.insert(1, {"epoch": 0, "step": 3, "val/force_mae": "", "train/loss": 1.0})  # a training row
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    curves = [read_curve(tmp_path / "a"), read_curve(tmp_path / "b")]
    assert curves[0] == {0: 9.0, 1: 5.0, 2: 4.0}
    epochs, mean, low, high = mean_curve(curves)
    assert epochs.tolist() == [0, 1, 2] and mean.tolist() == [8.5, 5.5, 3.0] and low.tolist() == [8.0, 5.0, 2.0]
    figure = plot_learning_curves(tmp_path / "fig" / "curves.png", {"two seeds": curves, "one": curves[:1]})
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="logs no 'val/energy_mae'"):
        read_curve(tmp_path / "a", "val/energy_mae")
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        read_curve(tmp_path / "fig")
