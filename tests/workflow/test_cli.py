"""The commands as a user meets them (``hessdistill.cli.entry``, what the console scripts call): ``--version`` is
hessdistill's; ``--help`` lists only the command's own config groups and is answered before torch or Lightning are
imported; errors of our own are one ``error:`` line on stderr with exit status 2 (a traceback under
``HYDRA_FULL_ERROR=1`` or ``--debug``); ``hessdistill list``; ``hessdistill-label`` takes key=value; and a training
run's console carries none of the dependencies' known noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import hessdistill
from conftest import compose_config, rattled
from hessdistill.cli.entry import COMMANDS, run
from hessdistill.cli.main import main as hessdistill_main
from hessdistill.data.store import write_structures
from hessdistill.data.structures import Structure

TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
HEAVY = ("torch", "lightning", "mace", "torch_geometric")
TRAINING_GROUPS = ("student:", "distill:", "trainer:", "augment:")


def python(code: str, *args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -c code args`` in a fresh process (one thread, no HYDRA_FULL_ERROR unless ``env`` sets it)."""
    base = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)


COMMAND = "import sys; from hessdistill.cli.entry import run; run(sys.argv[1], sys.argv[2:])"


def test_version_is_hessdistills(capsys):
    for name in COMMANDS:
        run(name, ["--version"])
        assert capsys.readouterr().out == f"hessdistill {hessdistill.__version__}\n"
    with pytest.raises(SystemExit) as stop:
        hessdistill_main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"hessdistill {hessdistill.__version__}\n"


def test_help_lists_the_commands_own_groups_before_any_heavy_import(tmp_path):
    """Every command's --help in one fresh process: its own description and groups, and neither torch nor
    Lightning imported; then predict's missing input, refused in one line, still before them."""
    code = f"""
import io, json, sys, contextlib
from hessdistill.cli.entry import COMMANDS, run
helps = {{}}
for name in COMMANDS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            run(name, ["--help"])
        except SystemExit as stop:
            assert stop.code in (0, None), (name, stop.code)
    helps[name] = out.getvalue()
heavy = [m for m in {HEAVY!r} if m in sys.modules]
try:
    run("predict", ["checkpoint=missing.ckpt"])
except SystemExit as stop:
    code = stop.code
print(json.dumps({{"helps": helps, "heavy": heavy, "code": code,
                  "heavy_after_refusal": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["heavy"] == [] and out["heavy_after_refusal"] == []
    assert out["code"] == 2 and done.stderr == ("error: hessdistill-predict needs input=<structure file> "
                                                "output=<extxyz file to write> (see hessdistill-predict --help)\n")
    helps = out["helps"]
    for name, text in helps.items():
        argparse = not COMMANDS[name].hydra  # argparse's help opens with its usage line
        assert text.startswith(f"usage: hessdistill-{name}" if argparse else f"hessdistill-{name}"), text[:200]
    for name in ("predict", "deploy", "label"):  # no config groups: none of training's listed
        assert not any(group in helps[name] for group in ("Config groups", *TRAINING_GROUPS)), helps[name]
        assert "allow_unseen_elements" in helps[name] or name != "predict"
    for name in ("train", "onpolicy"):
        assert all(f"\n{group}" in helps[name] for group in TRAINING_GROUPS)
        assert "student: escn, gemnet_dt, gemnet_t, mace, painn, [painn_small]" in helps[name]
    assert "\nteacher: ani1ccx, [ani1x]" in helps["evaluate"] and "\nstudent:" not in helps["evaluate"]
    assert "molecules: null" in helps["label"] and "usage: hessdistill-demo" in helps["demo"]


def test_hessdistill_list_reads_the_shipped_configs_and_registries(capsys):
    hessdistill_main(["list", "students", "teachers"])
    out = capsys.readouterr().out
    assert "students (student=<name>):" in out and "teachers (teacher=<name>):" in out
    assert "  painn_small  A small PaiNN for CPU demos and tests" in out
    assert "registered student classes" in out and "escn, gemnet, mace, painn, schnet" in out
    assert "subsets (subset=" not in out
    hessdistill_main(["list"])
    out = capsys.readouterr().out
    assert all(f"{what} (" in out for what in ("teachers", "students", "subsets", "experiments"))
    assert "  demo " in out and "demo_hcno" in out
    with pytest.raises(SystemExit) as stop:
        hessdistill_main(["list", "molecules"])
    assert stop.value.code == 2 and "choose from teachers, students, subsets, experiments" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["student=nonesuch"], "error: In 'train': Could not find 'student/nonesuch' Available options in 'student': "
                           "escn, gemnet_dt, gemnet_t, mace, painn, painn_small, schnet\n"),
    (["nonesuch=1"], "error: Could not override 'nonesuch'. To append to your config use +nonesuch=1 Key 'nonesuch' "
                     "is not in struct\n"),
    (["weights.hessian=[1"], "error: the override weights.hessian=[1 does not parse: no viable alternative at input "
                             "'[1'\n"),
])
def test_config_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        run("train", argv)
    assert stop.value.code == 2 and capsys.readouterr().err == message


def test_errors_of_ours_are_one_line_and_a_traceback_on_request(tmp_path, labelled_store):
    """A store without the teacher's labels: one line from a real process, before training; with
    HYDRA_FULL_ERROR=1 or --debug the traceback of the StoreError. A bug (not an error of ours) keeps its
    traceback."""
    bare = tmp_path / "bare.h5"
    structures = []
    for k, name in enumerate(["H2O", "CH4", "NH3", "CH3OH"]):
        structure = Structure.from_atoms(rattled(name, seed=k), source=f"made[{k}]")
        structure.energy, structure.forces = -10.0 * (k + 1), 0.1 * torch.ones(len(structure.z), 3).numpy()
        structures.append(structure)
    write_structures(bare, structures)
    argv = ["train", "experiment=demo", f"subset.store={bare}", "subset.split=[0.5,0.25,0.25]", *TINY,
            f"hydra.run.dir={tmp_path / 'run'}"]
    done = python(COMMAND, *argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr == (f"error: {bare}: teacher 'ani1x' has labels for 0/4 structures; run `hessdistill-precompute "
                           f"teacher=ani1x subset=demo_hcno`\n"), done.stderr
    for extra_env, extra in (({"HYDRA_FULL_ERROR": "1"}, []), ({}, ["--debug"])):
        loud = python(COMMAND, *argv, *extra, cwd=tmp_path, env=extra_env)
        assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
        assert "StoreError: " in loud.stderr and "has labels for 0/4" in loud.stderr
    missing = python(COMMAND, "predict", f"checkpoint={tmp_path / 'none.ckpt'}", "input=a.xyz", "output=b.xyz",
                     cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr == f"error: checkpoint not found: {tmp_path / 'none.ckpt'}\n"
    crash = python("import sys, hessdistill.cli.predict as p; p.load_student = lambda *a, **k: 1 / 0; "
                   "from hessdistill.cli.entry import run; run('predict', sys.argv[1:])",
                   "checkpoint=x.ckpt", "input=a.xyz", "output=b.xyz", cwd=tmp_path)
    assert crash.returncode == 1 and "Traceback" in crash.stderr and "ZeroDivisionError" in crash.stderr


def test_a_training_run_shows_none_of_the_dependencies_known_noise(tmp_path, labelled_store):
    """A one-epoch run that deploys its student (Lightning, metatomic): stderr holds no noise line, and Lightning's
    lines reach the run's train.log once."""
    run_dir = tmp_path / "run"
    done = python(COMMAND, "train", "experiment=demo", f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]",
                  "subset.batch_size=4", "trainer.max_epochs=1", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for noise in ("litlogger", "LeafSpec", "logging interval", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",
                  "quantity is deprecated", "cuequivariance", "IProgress"):
        assert noise not in done.stderr + done.stdout, noise
    assert (run_dir / "deployed.pt").is_file() and json.loads((run_dir / "metrics.json").read_text())["epochs"] == 1
    log = (run_dir / "train.log").read_text()
    assert log.count("`Trainer.fit` stopped: `max_epochs=1` reached.") == 1
    assert "`Trainer.fit` stopped" not in done.stderr  # shown once, by Hydra's console handler on stdout


def test_mace_imports_quietly_and_torch_load_notes_are_filtered(tmp_path):
    done = python("from hessdistill.quiet import import_mace; import_mace(); import mace.tools.cg", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "", done.stdout
    from hessdistill.quiet import quiet_dependencies

    path = tmp_path / "t.pt"
    torch.save({"x": torch.ones(2)}, path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_dependencies()
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"], saved = "1", os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        try:
            torch.load(path)
        finally:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") if saved is None else \
                os.environ.__setitem__("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", saved)
        warnings.warn("a warning of another kind", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a warning of another kind"]  # targeted, not blanket


def test_label_takes_key_value_and_its_flags_as_aliases():
    from hessdistill.cli.label import overrides_from_flags

    flags = ["--molecules", "CH3SH", "CH3Cl", "--seeds", "1", "2", "--snapshots", "3", "--out", "x.extxyz",
             "--xc", "lda,vwn", "--basis", "6-31g*", "--xtb-method", "GFN1-xTB", "--teacher", "ani2x",
             "--teacher-info", "a/ani-2x_8x.info", "workers=2"]
    overrides = overrides_from_flags(flags)
    assert overrides == ["molecules=[CH3SH,CH3Cl]", "seeds=[1,2]", "snapshots=3", "out=x.extxyz", "xc='lda,vwn'",
                         "basis=6-31g*", "xtb_method=GFN1-xTB", "md_teacher=ani2x",
                         "md_teacher_info=a/ani-2x_8x.info", "workers=2"]
    cfg = compose_config("label", overrides)
    assert list(cfg.molecules) == ["CH3SH", "CH3Cl"] and list(cfg.seeds) == [1, 2] and cfg.snapshots == 3
    assert (cfg.out, cfg.xc, cfg.basis, cfg.xtb_method, cfg.workers) == ("x.extxyz", "lda,vwn", "6-31g*", "GFN1-xTB", 2)
    # --teacher is the MD model: `teacher=` would select the teacher config group of the other commands
    assert (cfg.md_teacher, cfg.md_teacher_info) == ("ani2x", "a/ani-2x_8x.info")
    with pytest.raises(ValueError, match="--snapshots takes one value, got 2: write snapshots=<value>"):
        overrides_from_flags(["--snapshots", "1", "2"])


def test_label_refuses_both_sources_in_one_line(tmp_path):
    done = python(COMMAND, "label", "out=x.extxyz", "molecules=[CH4]", "structures=given.xyz", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("error: hessdistill-label needs molecules=[<g2 names>] (sampled by teacher MD) or "
                           "structures=<file> (labelled as they are), one of the two\n")
    assert not (tmp_path / "x.extxyz").exists()
