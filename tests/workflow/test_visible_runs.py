"""A run as a user sees it from Python: hd.train shows progress with validation MAE and ends with a table in units,
leaves a log, learning curves and (logger=tensorboard) TensorBoard events in its folder, and hd.evaluate writes
into that folder with its fast defaults, saying what it runs."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import hessdistill as hd
from hessdistill.config import CONFIG_DIR
from hessdistill.evaluation.run_folder import evaluation_dir

TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]


@pytest.fixture(scope="module")
def shown(labelled_store, tmp_path_factory):
    """A 2-epoch run of the default recipe through hd.train (TensorBoard beside the CSV log), and what it printed."""
    work = tmp_path_factory.mktemp("visible")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.chdir(work)
        run = hd.train(f"subset.store={labelled_store}", "trainer.max_epochs=2", "subset.batch_size=4",
                       "subset.split=[0.5,0.25,0.25]", "rows=2", *TINY, logger="tensorboard",
                       output_dir=work / "run")
    return work, run, out.getvalue()


def test_training_shows_progress_and_ends_with_a_table_in_units(shown):
    work, run, printed = shown
    # a line per epoch (stdout is no terminal here) with the validation errors in their units
    epochs = re.findall(r"^epoch (\d)/2: loss [\d.e+-]+, val force MAE [\d.]+ meV/Å, val energy MAE [\d.]+ meV/atom",
                        printed, re.MULTILINE)
    assert epochs == ["1", "2"]
    test = run["test"]
    assert f"| force MAE (meV/Å)       | {test['test/force_mae']:.4g}" in printed
    assert f"| energy MAE (meV/atom)   | {test['test/energy_mae']:.4g}" in printed
    assert f"| Hessian-row MAE (eV/Å²) | {test['test/hessian_mae']:.4g}" in printed
    assert f"deployed model:  {run['deployed']}" in printed and Path(run["deployed"]).is_file()
    assert "demo_hcno/painn_small-hessian (hessian, teacher ani1x): 2 epochs in" in printed
    assert (work / "run" / "summary.md").read_text().strip() in printed


def test_the_run_folder_holds_log_curves_and_tensorboard_events(shown):
    work, run, _ = shown
    folder = work / "run"
    assert run["learning_curves"] == str(folder / "learning_curves.png")
    assert (folder / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((folder / "tensorboard").rglob("events.out.tfevents.*"))
    log = (folder / "train.log").read_text()  # a run started from Python logs like one from the command line
    assert "[hessdistill.cli.deploy][INFO] - deployed" in log
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # nothing written beside the run


def test_evaluate_writes_into_the_run_folder_and_says_what_it_runs(shown, monkeypatch):
    work, run, _ = shown
    monkeypatch.chdir(work)
    report = hd.evaluate(run=run["run_dir"], **{"speed.batch_size": 4, "speed.max_batch": 8, "speed.repeat": 1,
                                                 "speed.structures": 4})
    out = Path(run["run_dir"]) / "evaluation" / "test"
    assert report["output_dir"] == str(out)
    assert {"metrics.json", "metrics.md", "parity.png", "evaluate.log"} <= {p.name for p in out.iterdir()}
    assert "speed" in report and not {"md", "relax", "spectra"} & set(report)  # the fast defaults
    log = (out / "evaluate.log").read_text()
    assert "on the test split: accuracy (seconds), speed (4 structures up to batch 8" in log
    assert "not run: relax, md, spectra (each switched on by <section>.enabled=true, minutes)" in log
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # no outputs/evaluate/<time>


def test_the_command_line_evaluates_into_the_run_folder_too(shown, tmp_path):
    _, run, _ = shown
    folder = Path(run["run_dir"])

    def hydra_dir(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("evaluate", overrides=list(overrides), return_hydra_config=True).hydra.run.dir

    assert hydra_dir(f"run={folder}") == str(folder / "evaluation" / "test")
    assert hydra_dir(f"checkpoint={folder / 'checkpoints' / 'best.ckpt'}", "split=val") == \
        str(folder / "evaluation" / "val-best")
    assert hydra_dir(f"checkpoint={tmp_path / 'loose.ckpt'}").startswith("outputs/evaluate/")
    assert hydra_dir(f"run={tmp_path}").startswith("outputs/evaluate/")  # not a run folder: nothing written into it
    assert evaluation_dir(None, None, "test") is None
