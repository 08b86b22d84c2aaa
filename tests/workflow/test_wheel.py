"""The package as a user installs it: a wheel (no editable install, no checkout on the path) in a fresh virtual
environment runs ``hessdistill-precompute``, a 2-epoch ``hessdistill-train`` (which deploys its student),
``hessdistill-evaluate`` and ``hessdistill-deploy`` from an empty directory, with a subset from the user's own
config folder (``--config-dir``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment holding only the hessdistill wheel; its dependencies come from this test environment's
    site-packages through a .pth line (so nothing is downloaded, and this environment's editable install, whose own
    .pth is not processed there, cannot leak the checkout in)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a clean copy: a build never writes into, or reads stale files from, the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hessdistill", source / "hessdistill", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = (work / "dist").glob("hessdistill-*.whl")
    env = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=600)
    purelib = subprocess.run([str(env / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def command(env: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(env / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**clean, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"})


def test_wheel_runs_precompute_train_and_evaluate_from_an_empty_directory(installed, tmp_path):
    where = command(installed, tmp_path, "python", "-c", "import hessdistill; print(hessdistill.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(installed)), where.stdout + where.stderr
    (tmp_path / "myconf" / "subset").mkdir(parents=True)
    (tmp_path / "myconf" / "subset" / "tiny.yaml").write_text(  # the package's demo subset, first 24 frames
        "defaults: [demo_hcno, _self_]\nname: tiny\nstore: stores/tiny.h5\nsource: {index: ':24'}\n")
    user = ["--config-dir", "myconf", "subset=tiny"]
    done = command(installed, tmp_path, "hessdistill-precompute", *user, "hydra.run.dir=pre")
    assert done.returncode == 0, done.stderr[-3000:]
    done = command(installed, tmp_path, "hessdistill-train", *user, "experiment=demo", "trainer.max_epochs=2",
                   "student.hidden_channels=16", "student.num_layers=2", "hydra.run.dir=run")
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert trained["epochs"] == 2 and trained["test"]["test/force_mae"] > 0
    assert trained["deployed"] == str(tmp_path / "run" / "deployed.pt") and Path(trained["deployed"]).is_file()
    done = command(installed, tmp_path, "hessdistill-deploy", "checkpoint=run/checkpoints/last.ckpt",
                   "target=student.pt", "dtype=float64")
    assert done.returncode == 0 and (tmp_path / "student.pt").is_file(), done.stderr[-3000:]
    done = command(installed, tmp_path, "hessdistill-evaluate", *user, "checkpoint=run/checkpoints/last.ckpt",
                   "speed.enabled=false", "md.enabled=false", "relax.enabled=false", "spectra.enabled=false",
                   "hydra.run.dir=eval")
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"]
    assert evaluated["force_mae"] == pytest.approx(trained["test"]["test/force_mae"], rel=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "myconf", "pre", "run", "stores", "student.pt"]


def test_a_missing_data_file_is_named_with_the_working_directory(installed, tmp_path):
    done = command(installed, tmp_path, "hessdistill-precompute", "subset.source.path=frames.xyz",
                   "subset.store=stores/x.h5", "hydra.run.dir=pre")
    assert done.returncode != 0
    assert f"structure file not found: frames.xyz (relative to the working directory {tmp_path})" in done.stderr


def test_the_installed_commands_answer_version_help_and_list_without_model_code(installed, tmp_path):
    """The console scripts as installed: ``--version`` is hessdistill's, ``--help`` names only the command's own
    groups (your --config-dir's included), ``hessdistill list`` works, and none of them imports torch."""
    import hessdistill

    for script in ("hessdistill", "hessdistill-train", "hessdistill-label"):
        done = command(installed, tmp_path, script, "--version")
        assert done.returncode == 0 and done.stdout == f"hessdistill {hessdistill.__version__}\n", done.stderr
    (tmp_path / "myconf" / "subset").mkdir(parents=True)
    (tmp_path / "myconf" / "subset" / "mine.yaml").write_text("defaults: [demo_hcno, _self_]\nname: mine\n")
    done = command(installed, tmp_path, "hessdistill-train", "--config-dir", "myconf", "--help")
    assert done.returncode == 0 and "subset: [demo_hcno], md22_buckyball_catcher" in done.stdout
    assert ", mine, " in done.stdout  # the user's own config folder's subset among the options
    done = command(installed, tmp_path, "hessdistill-predict", "--help")
    assert done.returncode == 0 and "hessdistill-predict:" in done.stdout and "student:" not in done.stdout
    done = command(installed, tmp_path, "hessdistill", "list", "experiments")
    assert done.returncode == 0 and "experiments (experiment=<name>):" in done.stdout
    done = command(installed, tmp_path, "python", "-c", "import sys; from hessdistill.cli.entry import run\n"
                   "try:\n    run('train', ['--help'])\nexcept SystemExit:\n    pass\n"
                   "assert 'torch' not in sys.modules and 'lightning' not in sys.modules")
    assert done.returncode == 0, done.stderr[-2000:]
