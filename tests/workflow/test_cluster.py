"""Cluster workflow: SLURM and local submitit launchers compose for training sweeps and sharded precompute, and a
sweep really runs through submitit's local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from hessdistill.config import CONFIG_DIR

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def composed(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


def test_slurm_sweep_of_lambda_and_rows_composes():
    cfg = composed("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=demo",
                             "trainer=gpu", "weights.hessian=400", "rows=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 1440 and launcher.array_parallelism == 64
    hessian = cfg.distill.terms.hessian
    assert hessian.weight == 400 and hessian.rows == 4 and cfg.trainer.accelerator == "gpu"


def test_sharded_precompute_composes_as_an_array_job():
    for i in range(4):
        cfg = composed("precompute", ["hydra/launcher=slurm", "teacher=ani1x", f"shard={i}/4"])
        assert cfg.shard == f"{i}/4" and cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert composed("precompute", ["merge_shards=4"]).merge_shards == 4
    assert composed("train", ["hydra/launcher=local"]).hydra.launcher._target_.endswith("LocalLauncher")


def test_sweep_runs_through_submitit_local_executor(labelled_store, tmp_path):
    sweep = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "hessdistill.cli.train", "--multirun", "hydra/launcher=local", "experiment=demo",
           "distill=undistilled,hessian", f"subset.store={labelled_store}", "trainer.max_epochs=1",
           "subset.batch_size=8", "rows=1", f"hydra.sweep.dir={sweep}",
           "student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}
    assert sorted(metrics) == ["painn_small-hessian", "painn_small-undistilled"]  # named in the submitting process
    assert list(sweep.glob(".submitit/*"))  # the jobs went through submitit


def test_epoch_sampler_shards_the_same_order_across_ranks(monkeypatch):
    from hessdistill.data.datamodule import EpochSampler

    single = EpochSampler(10, seed=3)
    single.set_epoch(2)
    order = [k for k, epoch in single]
    assert sorted(order) == list(range(10)) and {epoch for _, epoch in single} == {2}
    shards = []
    for rank in range(3):
        monkeypatch.setattr(EpochSampler, "_rank_world", staticmethod(lambda rank=rank: (rank, 3)))
        sampler = EpochSampler(10, seed=3)
        sampler.set_epoch(2)
        shards.append([k for k, _ in sampler])
        assert len(sampler) == len(shards[-1]) == 4  # 10 padded to 12 by wrapping: equal batches on every rank
    # rank r takes every 3rd entry of the same order, so batch k of the ranks together is batch k of one process
    assert [shards[r][j] for j in range(4) for r in range(3)] == (order + order[:2])
    single.set_epoch(3)
    assert [k for k, _ in single] != order  # a new order every epoch


def test_ddp_on_two_processes_matches_one_process_on_the_same_global_batch(labelled_store, tmp_path):
    """trainer=ddp, 2 CPU processes (gloo) with batch 4 each vs 1 process with batch 8: same curve and result."""
    import csv

    common = [sys.executable, "-m", "hessdistill.cli.train", "experiment=demo", f"subset.store={labelled_store}",
              "trainer.max_epochs=3", "subset.split=[0.5,0.25,0.25]", "rows=2",
              "student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0",
              "callbacks.ema.decay=0.9", "trainer.enable_progress_bar=false"]
    runs = {"single": ["subset.batch_size=8"],
            "ddp": ["subset.batch_size=4", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for name, extra in runs.items():
        proc = subprocess.run([*common, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (log,) = (tmp_path / name).rglob("metrics.csv")
        curve = {int(r["epoch"]): float(r["val/loss_ef"]) for r in csv.DictReader(open(log)) if r.get("val/loss_ef")}
        results[name] = (curve, json.loads((tmp_path / name / "metrics.json").read_text())["test"])
    (curve_1, test_1), (curve_2, test_2) = results["single"], results["ddp"]
    assert sorted(curve_1) == sorted(curve_2) == [0, 1, 2] and curve_1[2] != curve_1[0]
    for epoch in curve_1:
        assert curve_2[epoch] == pytest.approx(curve_1[epoch], rel=1e-5)
    for key, value in test_1.items():
        assert test_2[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_wandb_logger_runs_offline_beside_csv(labelled_store, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "logger=wandb", f"subset.store={labelled_store}",
                                          "trainer.max_epochs=1", "subset.batch_size=8",
                                          f"logger.0.save_dir={tmp_path / 'run'}",
                                          f"logger.1.save_dir={tmp_path / 'run'}",
                                          "student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8",
                                          "student.cutoff=4.0"])
    assert cfg.logger[1].offline is True
    run(cfg, str(tmp_path / "run"))
    assert list((tmp_path / "run").rglob("offline-run-*"))  # a wandb run to `wandb sync` later
    assert list((tmp_path / "run").rglob("metrics.csv"))
