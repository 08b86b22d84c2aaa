"""Visible training: the progress line's metrics and units, a log line for each λ_KD halving and learning-rate
reduction, the learning curves read from a CSV log, the final table, and the default recipe."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hessdistill as hd
from hessdistill.evaluation.learning_curves import learning_curve_figure, read_metrics_csv, write_learning_curves
from hessdistill.training.callbacks import HalveKDWeight
from hessdistill.training.progress import LogLearningRateReductions, ProgressBar
from hessdistill.training.run_summary import duration, summary_table


def fake_trainer(**metrics) -> SimpleNamespace:
    return SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
                           progress_bar_metrics={"train/loss": metrics.get("train/loss", 0.0), "lr": "1e-3"},
                           loggers=[], is_global_zero=True, current_epoch=4, max_epochs=10, sanity_checking=False)


def test_progress_shows_loss_and_validation_errors_with_units(capsys):
    trainer = fake_trainer(**{"train/loss": 0.8123, "val/force_mae": 74.44, "val/energy_mae": 3.214})
    items = ProgressBar(terminal=True).get_metrics(trainer, None)
    # the loss once, with what else is logged for the bar; no logger version number (Lightning's v_num)
    assert items == {"loss": "0.8123", "val force MAE": "74.4 meV/Å", "val energy MAE": "3.21 meV/atom", "lr": "1e-3"}
    # not a terminal (CI, a log file): a line per epoch, not a bar
    bar = ProgressBar(terminal=False)
    assert not bar.is_enabled
    bar._train_progress_bar = SimpleNamespace(disable=True)
    bar.on_train_epoch_end(trainer, None)
    line = capsys.readouterr().out
    assert line.startswith("epoch 5/10: loss 0.8123, val force MAE 74.4 meV/Å, val energy MAE 3.21 meV/atom, lr 1e-3 (")


def test_kd_halving_logs_its_line(caplog):
    from conftest import distill_terms
    from hessdistill.training.module import DistillModule

    module = DistillModule({"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 8, "num_layers": 1,
                            "num_rbf": 4, "cutoff": 3.0}, distill_terms(hessian=400.0))
    trainer = fake_trainer(**{"val/loss_ef": 1.0, "val/teacher_loss_ef": 2.0})
    with caplog.at_level(logging.INFO, logger="hessdistill"):
        HalveKDWeight().on_validation_end(trainer, module)
    assert module.loss.weight("hessian") == 200.0
    (record,) = [r for r in caplog.records if "halved" in r.getMessage()]
    assert record.getMessage() == ("after epoch 5: the student's val/loss_ef 1 ≤ the teacher's 2: λ of hessian halved "
                                   "400 → 200 (halving 1 of at most 1)")


def test_a_learning_rate_reduction_logs_its_line(caplog):
    weights = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weights], lr=1e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=2)
    trainer = fake_trainer()
    trainer.lr_scheduler_configs = [SimpleNamespace(scheduler=plateau, monitor="val/loss_ef")]
    callback = LogLearningRateReductions()
    with caplog.at_level(logging.INFO, logger="hessdistill"):
        for epoch in range(6):
            trainer.current_epoch = epoch
            callback.on_train_epoch_start(trainer, None)
            plateau.step(1.0)  # never improves: a reduction after 1 + patience epochs
    lines = [r.getMessage() for r in caplog.records if "learning rate" in r.getMessage()]
    assert lines == ["after epoch 4: learning rate 0.001 → 0.0008 (ReduceLROnPlateau: val/loss_ef did not improve "
                     "for 2 epochs)"]


def lightning_csv(path, val: dict[int, float], train: dict[int, list[float]], weights: dict[int, float]):
    """A metrics.csv as Lightning's CSVLogger writes it: one row per logging call, empty cells elsewhere."""
    rows = ["epoch,step,train/loss,train/weight_hessian,val/force_mae"]
    step = 0
    for epoch in sorted(val):
        for loss in train[epoch]:
            rows.append(f"{epoch},{step},{loss},{weights[epoch]},")
            step += 5
        rows.append(f"{epoch},{step},,,{val[epoch]}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_learning_curves_are_the_csv_logs_epoch_values(tmp_path):
    val = {0: 950.0, 1: 400.0, 2: 150.0, 3: 90.0}
    train = {0: [10.0, 8.0], 1: [6.0, 4.0], 2: [3.0], 3: [2.0, 1.0]}
    weights = {0: 3.0, 1: 3.0, 2: 1.5, 3: 1.5}
    one = lightning_csv(tmp_path / "a.csv", val, train, weights)
    metrics = read_metrics_csv(one)
    assert metrics["val/force_mae"] == val
    assert metrics["train/loss"] == {0: 9.0, 1: 5.0, 2: 3.0, 3: 1.5}  # the mean of an epoch's steps
    fig = learning_curve_figure([one], title="t")
    force, loss = fig.axes
    (curve,) = [line for line in force.lines if line.get_label() != "λ_KD halved"]
    np.testing.assert_array_equal(curve.get_xdata(), [1, 2, 3, 4])  # epochs counted from 1
    np.testing.assert_array_equal(curve.get_ydata(), [950, 400, 150, 90])
    assert force.get_yscale() == "log" and "meV/Å" in force.get_ylabel()
    assert [line.get_xdata()[0] for line in force.lines if line.get_label() == "λ_KD halved"] == [3]
    # several runs: a line each, labelled
    two = lightning_csv(tmp_path / "b.csv", {0: 800.0, 1: 700.0}, {0: [5.0], 1: [4.0]}, {0: 3.0, 1: 3.0})
    fig = learning_curve_figure({"λ 3": one, "λ 1": two})
    assert [line.get_label() for line in fig.axes[0].lines] == ["λ 3", "λ 1"]
    png = write_learning_curves(tmp_path / "curves.png", [one, two])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_final_table_has_units_and_paths():
    result = {"run_name": "demo_hcno/painn_small-hessian", "distill": "hessian", "teacher": "ani1x", "epochs": 150,
              "wall_time_s": 754.2, "run_dir": "outputs/r", "checkpoint": "outputs/r/checkpoints/last.ckpt",
              "deployed": "outputs/r/deployed.pt", "learning_curves": "outputs/r/learning_curves.png",
              "test": {"test/force_mae": 74.41, "test/energy_mae": 3.2, "test/hessian_mae": 0.5123,
                       "test/teacher_force_mae": 45.0, "test/teacher_energy_mae": 2.5}}
    table = summary_table(result)
    assert "150 epochs in 12 min 34 s" in table
    assert "| force MAE (meV/Å)       | 74.41   | 45            |" in table
    assert "| energy MAE (meV/atom)   | 3.2     | 2.5           |" in table
    assert "| Hessian-row MAE (eV/Å²) | 0.5123  | reference     |" in table
    for path in ("outputs/r/checkpoints/last.ckpt", "outputs/r/deployed.pt", "outputs/r/learning_curves.png"):
        assert path in table
    assert duration(12.34) == "12.3 s" and duration(7385) == "2 h 03 min"


def test_the_default_recipe_is_the_validated_one_and_the_papers_stay_named():
    plain, demo = hd.compose("train", "subset=scl_organics"), hd.compose("train", experiment="demo")
    for cfg in (plain, demo):
        assert cfg.student.hidden_channels == 64 and cfg.student.cutoff == 5.0  # PaiNN-small
        assert dict(cfg.weights) == {"energy": 5.0, "forces": 100.0, "hessian": 3.0, "energy_grad": 5.0, "n2n": 1e4}
        assert cfg.callbacks.ema.decay == 0.99 and cfg.scheduler.patience == 5 and cfg.trainer.max_epochs == 150
        assert cfg.distill.terms.hessian.weight == 3.0
    assert plain.student == demo.student and plain.callbacks == demo.callbacks and plain.scheduler == demo.scheduler
    paper = hd.compose("train", experiment="paper_spice_monomers")
    assert paper.weights.hessian == 400.0 and paper.student.hidden_channels == 128  # the paper's 1.0M PaiNN
    assert paper.callbacks.ema.decay == 0.999 and paper.scheduler.patience == 10
    gemnet = hd.compose("train", experiment="paper_md22_buckyball_catcher")
    assert gemnet.scheduler.patience == 5 and gemnet.scheduler.min_lr == 1e-6  # paper Table 8, GemNet column


def test_run_names_carry_subset_student_and_distill():
    assert hd.compose("train").run_name == "demo_hcno/painn_small-hessian"
    assert hd.compose("train", student="schnet", distill="undistilled").run_name == "demo_hcno/schnet-undistilled"
    assert hd.compose("train", experiment="paper_md22_dw_nanotube").run_name == \
        "md22_dw_nanotube/paper-gemnet_dt-hessian"
    # a config composed without Hydra's record of the choices falls back to the student's class
    from conftest import compose_config

    assert compose_config("train", ["student=painn"]).run_name == "demo_hcno/painn-hessian"


@pytest.mark.parametrize("name, overrides, expected", [
    ("painn_small-hessian", "seed=1,weights.hessian=3", "painn_small-hessian-seed=1,weights.hessian=3"),
    ("painn_small-hessian", "", "painn_small-hessian"),
    ("painn-hessian", "subset.store=/data/a.h5", "painn-hessian-subset.store=_data_a.h5"),
])
def test_sweep_folder_names(name, overrides, expected):
    from hessdistill.config import MAX_DIRNAME, sweep_dirname

    assert sweep_dirname(name, overrides) == expected
    long = sweep_dirname(name, ",".join(f"k{i}=v" for i in range(60)))
    other = sweep_dirname(name, ",".join(f"k{i}=v" for i in range(59)) + ",k59=w")
    assert len(long) == MAX_DIRNAME and long != other  # cut, and still one folder per job
