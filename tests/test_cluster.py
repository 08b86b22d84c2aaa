"""Cluster workflow: SLURM and local submitit launchers compose for training sweeps and sharded precompute, and a
sweep really runs through submitit's local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from hessdistill.cli.config_path import CONFIG_DIR

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def composed(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


def test_slurm_sweep_of_lambda_and_rows_composes():
    cfg = composed("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=demo",
                             "trainer=gpu", "distill.lambda_kd=400", "distill.rows=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 1440 and launcher.array_parallelism == 64
    assert cfg.distill.weights.hessian == 400 and cfg.distill.rows == 4 and cfg.trainer.accelerator == "gpu"


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
           "subset.batch_size=8", "subset.rows=1", "graph_backend=torch", f"hydra.sweep.dir={sweep}",
           "student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}
    assert sorted(metrics) == ["demo_hcno-hessian-1", "demo_hcno-undistilled-0"]
    assert list(sweep.glob(".submitit/*"))  # the jobs went through submitit
