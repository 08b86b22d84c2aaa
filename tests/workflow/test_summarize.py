"""hessdistill-summarize / hd.summarize: a sweep's run folders (as hessdistill-train and Hydra write them) as one
table of the settings that differ, test metrics with units, mean ± sample std over seeds and n."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import hessdistill as hd
from hessdistill.cli import summarize as cli

FORCE = {(1, 0): 80.0, (1, 1): 76.0, (3, 0): 70.0, (3, 1): 74.0}  # (λ_KD, seed) → test force MAE, meV/Å


def write_run(folder, overrides: list[str] | None, force: float | None, config: dict | None = None):
    """A run folder as hessdistill-train leaves it: run_info.json, config.yaml, metrics.json (once finished) and,
    under Hydra, .hydra/overrides.yaml."""
    folder.mkdir(parents=True)
    (folder / "run_info.json").write_text(json.dumps({"git_commit": None, "argv": []}))
    OmegaConf.save(OmegaConf.create(config or {"seed": 0}), folder / "config.yaml")
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if force is not None:
        test = {"test/force_mae": force, "test/energy_mae": force / 20, "test/hessian_mae": 0.5,
                "test/teacher_force_mae": 45.0, "test/loss_ef": 1.0}
        (folder / "metrics.json").write_text(json.dumps({"run_name": "x", "epochs": 150, "test": test}))


@pytest.fixture
def sweep(tmp_path):
    """multirun/<time> of ``--multirun experiment=demo seed=0,1 weights.hessian=1,3`` plus an unfinished third seed
    and a run whose metrics.json is not JSON."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for (kd, seed), force in FORCE.items():
        write_run(root / f"painn_small-hessian-seed={seed},weights.hessian={kd}",
                  ["experiment=demo", f"seed={seed}", f"weights.hessian={kd}"], force)
    write_run(root / "painn_small-hessian-seed=2,weights.hessian=3", ["experiment=demo", "seed=2",
                                                                        "weights.hessian=3"], None)
    broken = root / "painn_small-hessian-seed=2,weights.hessian=1"
    write_run(broken, ["experiment=demo", "seed=2", "weights.hessian=1"], None)
    (broken / "metrics.json").write_text("{not json")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_a_sweep_is_one_table_with_mean_and_std_over_seeds(sweep):
    summary = hd.summarize(sweep)
    assert summary.varied == ["seed", "weights.hessian"] and summary.common == {"experiment": "demo"}
    by_kd = {g["weights.hessian"]: g for g in summary.groups}
    for kd in (1, 3):
        forces = [FORCE[(kd, s)] for s in (0, 1)]
        assert by_kd[str(kd)]["force_mae_mean"] == pytest.approx(np.mean(forces))
        assert by_kd[str(kd)]["force_mae_std"] == pytest.approx(np.std(forces, ddof=1))
        assert by_kd[str(kd)]["n"] == 2
    assert by_kd["3"]["unfinished"] == 1 and by_kd["1"]["unfinished"] == 0
    table = summary.table()
    header = ("| weights.hessian | force MAE (meV/Å) | energy MAE (meV/atom) | Hessian-row MAE (eV/Å²) | "
              "teacher force MAE (meV/Å) | n")
    assert header in table
    assert "| 1               | 78.0 ± 2.8        | 3.90 ± 0.14" in table  # 80, 76 → 78.0 ± 2.83
    assert "| 3               | 72.0 ± 2.8        | 3.60 ± 0.14" in table
    assert "| 2 (+1 unfinished) |" in table
    assert "mean ± sample std over seed (n runs)" in table and "same in every run: experiment=demo" in table
    assert "skipped " in table and "weights.hessian=1/metrics.json: not JSON" in table


def test_the_command_prints_the_table_and_writes_csv(sweep, tmp_path, capsys):
    cli.main([str(sweep), "--csv", str(tmp_path / "groups.csv")])
    printed = capsys.readouterr().out
    assert "78.0 ± 2.8" in printed and "groups written to" in printed
    rows = list(csv.DictReader(open(tmp_path / "groups.csv")))
    assert [r["weights.hessian"] for r in rows] == ["1", "3"] and float(rows[1]["force_mae_mean"]) == 72.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: no training runs under it"):
        cli.main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="nowhere: no such folder"):
        cli.main([str(tmp_path / "nowhere")])


def test_runs_started_from_python_are_compared_by_their_configs(tmp_path):
    """No .hydra/overrides.yaml: the resolved config.yaml, flattened; keys that repeat another's grouping
    (datamodule.seed with seed) and run_name are left out."""
    for seed in (0, 1):
        for kd in (1.0, 3.0):
            config = {"seed": seed, "run_name": f"demo_hcno/painn_small-hessian-{kd}", "weights": {"hessian": kd},
                      "datamodule": {"seed": seed, "batch_size": 8}, "distill": {"terms": {"hessian": {"weight": kd}}}}
            write_run(tmp_path / f"run-{seed}-{kd}", None, FORCE[(int(kd), seed)], config)
    summary = hd.summarize(tmp_path)
    assert summary.varied == ["seed", "weights.hessian"]
    assert [(g["weights.hessian"], g["n"], g["force_mae_mean"]) for g in summary.groups] == \
        [("1.0", 2, 78.0), ("3.0", 2, 72.0)]
    assert summary.common == {}  # a config's hundreds of shared keys are not listed


def test_a_run_folder_with_bad_overrides_is_skipped_naming_the_file(sweep):
    bad = sweep / "painn_small-hessian-seed=0,weights.hessian=1" / ".hydra" / "overrides.yaml"
    bad.write_text("key: not a list\n")
    summary = hd.summarize(sweep)
    assert len(summary.runs) == 4 and any("overrides.yaml: not a list of Hydra overrides" in s for s in summary.skipped)
