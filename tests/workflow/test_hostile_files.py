"""Hostile checkpoints and run folders (issue #25): files a user is handed are data. What they name is looked up in
hessdistill's registry (``hessdistill.registry``), never imported or built by Hydra; each attack below ran code or
wrote files before. Each case asserts that no marker file appears, that the error is one line naming the file, and,
through the commands, a non-zero exit. Also: non-finite weights are refused at load, a failed checkpoint write leaves
the previous checkpoint intact, and a legitimate run folder still evaluates."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import ase.io
import pytest
import torch
import yaml

import hessdistill as hd
from conftest import compose_config, distill_terms, rattled, tiny_mace, tiny_painn
from hessdistill.evaluation.checkpoint import CheckpointError, load_student
from hessdistill.evaluation.run_folder import RunFolderError
from hessdistill.registry import MAX_DEPTH, PLUGINS, STUDENTS, TEACHERS, RecordError, check_plain

TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
NO_SECTIONS = ["speed.enabled=false", "md.enabled=false", "relax.enabled=false", "spectra.enabled=false"]


class Touch:
    """Unpickling this opens (creates) ``path``: what a pickle can do when something loads it as code."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, labelled_store):
    """A tiny PaiNN trained for one epoch: its run directory and the overrides that rebuild its config."""
    from hessdistill.cli.train import run

    out = tmp_path_factory.mktemp("trained")
    common = ["experiment=demo", f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]",
              "subset.batch_size=4", f"logger.0.save_dir={out}", "test=false", "deploy.enabled=false"]
    run(compose_config("train", [*common, "trainer.max_epochs=1", *TINY]), str(out / "run"))
    return out / "run", common


def checkpoint_of(trained) -> dict:
    return torch.load(trained[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def edited(trained, path, student=None, plugins=None, **state_changes):
    """The trained checkpoint with its student and plugin records replaced (readable weights only: the attack is
    in what the records name)."""
    checkpoint = checkpoint_of(trained)
    if student is not None:
        checkpoint["hyper_parameters"]["student"] = student
    if plugins is not None:
        checkpoint["hyper_parameters"]["plugins"] = plugins
    checkpoint["state_dict"].update(state_changes)
    torch.save(checkpoint, path)
    return path


def hostile_checkpoint(trained, tmp_path, name: str):
    """(checkpoint file, marker file the attack would create) of attack ``name``. The targets are the issue's:
    attribute paths through hessdistill modules reach torch.load, shutil.copyfile, torch.save and numpy.savetxt."""
    marker = tmp_path / f"marker-{name}"
    victim, pickled = tmp_path / "victim.txt", tmp_path / f"payload-{name}.pkl"
    victim.write_text("copied by a checkpoint\n")
    pickled.write_bytes(pickle.dumps(Touch(marker)))
    tiny = checkpoint_of(trained)["hyper_parameters"]["student"]["kwargs"]
    save = {"_target_": "hessdistill.models.painn.torch.save", "obj": 1, "f": str(marker)}
    students = {
        "torch_load": {"_target_": "hessdistill.models.base.torch.load", "f": str(pickled), "weights_only": False},
        "copyfile": {"_target_": "hessdistill.models.base.torch.serialization.shutil.copyfile", "src": str(victim),
                     "dst": str(marker)},
        "torch_save": save,
        "nested": {"_target_": "hessdistill.models.painn.PaiNN", **tiny, "hidden_channels": save},
        "new_key": {"key": "hessdistill.models.painn.torch.save", "kwargs": {"obj": 1, "f": str(marker)}},
        "new_nested": {"key": "painn", "kwargs": {**tiny, "hidden_channels": save}},
    }
    plugins = {
        "plugin_savetxt": {"_target_": "hessdistill.training.plugins.np.savetxt", "fname": str(marker), "X": [1.0]},
        "plugin_os": {"_target_": "os.makedirs", "name": str(marker)},
        "plugin_builtins": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
    }
    path = tmp_path / f"{name}.ckpt"
    if name in students:
        return edited(trained, path, student=students[name]), marker
    return edited(trained, path, plugins=[plugins[name]]), marker


REFUSALS = {  # what each attack is told, after "<file>: "
    "torch_load": "refusing to build the student 'hessdistill.models.base.torch.load': it is neither one of "
                  "hessdistill's",
    "copyfile": "refusing to build the student 'hessdistill.models.base.torch.serialization.shutil.copyfile'",
    "torch_save": "refusing to build the student 'hessdistill.models.painn.torch.save'",
    "nested": "student painn kwargs.hidden_channels: has the key '_target_'; keyword arguments from a file are plain "
              "data, and nothing a file names is built",
    "new_key": "student 'hessdistill.models.painn.torch.save' is not registered",
    "new_nested": "student painn kwargs.hidden_channels: has the key '_target_'",
    "plugin_savetxt": "refusing to build the plugin 'hessdistill.training.plugins.np.savetxt'",
    "plugin_os": "refusing to build the plugin 'os.makedirs'",
    "plugin_builtins": "refusing to build the plugin 'builtins.open'",
}


def entry_points(trained, tmp_path) -> dict:
    """Every way a checkpoint is loaded, in-process: entry point name → call(path)."""
    from hessdistill.augment.onpolicy import run_rounds
    from hessdistill.cli import deploy, evaluate, predict, train

    run_dir, common = trained
    ase.io.write(tmp_path / "in.xyz", [rattled("H2O")])

    def onpolicy_resume(path):  # a killed on-policy run: round 0 trained, round 1 samples with last.ckpt
        out = tmp_path / "onpolicy"
        shutil.rmtree(out, ignore_errors=True)
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(run_dir / "splits.json", out / "splits.json")
        shutil.copy(path, out / "checkpoints" / "last.ckpt")
        (out / "rounds.json").write_text('[{"round": 0, "trained": true}]')
        run_rounds(compose_config("onpolicy", [*common, *TINY, "onpolicy.rounds=1", "onpolicy.starts=1",
                                               "onpolicy.device=cpu", "onpolicy.progress=false"]), out)

    return {
        "load_student": load_student,
        "load_calculator": lambda path: hd.load_calculator(path, device="cpu"),
        "deploy": lambda path: deploy.run(compose_config("deploy", [f"checkpoint={path}",
                                                                    f"target={tmp_path / 'deployed.pt'}"])),
        "predict": lambda path: predict.run(compose_config("predict", [
            f"checkpoint={path}", f"input={tmp_path / 'in.xyz'}", f"output={tmp_path / 'out.xyz'}", "device=cpu"])),
        "evaluate": lambda path: evaluate.run(compose_config("evaluate", [f"checkpoint={path}", common[1],
                                                                          "device=cpu", *NO_SECTIONS]),
                                              str(tmp_path / "eval")),
        "onpolicy_resume": onpolicy_resume,
        "train_resume": lambda path: train.run(compose_config("train", [*common, *TINY, f"ckpt_path={path}"]),
                                               str(tmp_path / "resumed")),
    }


def one_line(message: str, path) -> None:
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("attack", sorted(REFUSALS))
def test_a_hostile_checkpoint_runs_no_code_anywhere_it_is_loaded(tmp_path, trained, attack, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, marker = hostile_checkpoint(trained, tmp_path, attack)
    for name, call in entry_points(trained, tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            call(path)
        message = str(error.value)
        if name == "train_resume":  # resuming names the setting it came from
            assert message.startswith(f"ckpt_path={path}") or message.startswith(f"{path}: "), message
        elif name == "onpolicy_resume":
            assert message.startswith(f"{tmp_path / 'onpolicy' / 'checkpoints' / 'last.ckpt'}: "), message
        else:
            assert message.startswith(f"{path}: "), (name, message)
        assert REFUSALS[attack] in message and "\n" not in message, (name, message)
        assert not marker.exists(), f"{attack} through {name} created {marker}"
    assert not (tmp_path / "deployed.pt").exists() and not (tmp_path / "out.xyz").exists()


def test_lightning_itself_reads_a_resumed_checkpoint_as_weights_only(tmp_path, trained, monkeypatch):
    """Defence in depth: even with our weights-only check bypassed and torch told to unpickle by default
    (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD), Lightning's own load of ckpt_path refuses a checkpoint holding code."""
    from hessdistill.cli import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker-lightning"
    checkpoint = checkpoint_of(trained)
    checkpoint["payload"] = Touch(marker)
    path = tmp_path / "pickled.ckpt"
    torch.save(checkpoint, path)
    _, common = trained
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: not a hessdistill training checkpoint: it holds a "
                                                        f"Python object (io.open)")):
        train.run(compose_config("train", [*common, *TINY, f"ckpt_path={path}"]), str(tmp_path / "first"))
    monkeypatch.setattr(train, "check_resumable", lambda path, module: None)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train.run(compose_config("train", [*common, *TINY, f"ckpt_path={path}"]), str(tmp_path / "bypassed"))
    assert not marker.exists()


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path, trained):
    name = "student.representation.embedding.weight"
    weight = checkpoint_of(trained)["state_dict"][name].clone()
    weight[1, 2] = float("nan")
    path = edited(trained, tmp_path / "nan.ckpt", **{name: weight})
    message = f"{path}: weight representation.embedding.weight holds 1 NaN or inf of its {weight.numel()} values: " \
              f"the training diverged or the file is damaged"
    for call in (load_student, lambda p: hd.load_calculator(p, device="cpu")):
        with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
            call(path)
    weight[1, 2] = float("inf")
    with pytest.raises(CheckpointError, match="holds 1 NaN or inf"):
        load_student(edited(trained, tmp_path / "inf.ckpt", **{name: weight}))


# ---- the commands, in subprocesses: non-zero exit, one line naming the file, no marker ---------------------------
def run_folder_copy(trained, tmp_path, name: str, teacher=None, subset=None):
    """A copy of the trained run folder whose config.yaml names ``teacher`` (and ``subset``, when given)."""
    run_dir = tmp_path / name
    shutil.copytree(trained[0], run_dir, ignore=shutil.ignore_patterns("csv*", "lightning_logs"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["teacher"] = teacher if teacher is not None else config["teacher"]
    config["subset"] = {**config["subset"], **(subset or {})}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


COMMANDS = """
import importlib, json, sys
for name, command, args in json.loads(sys.argv[1]):
    sys.argv = [f"hessdistill-{command}", *args]
    print(f"=== {name}", file=sys.stderr, flush=True)
    try:
        importlib.import_module(f"hessdistill.cli.{command}").main()  # what the console script runs
        code = 0
    except SystemExit as exc:
        code = exc.code
    print(f"=== exit {code}", file=sys.stderr, flush=True)
"""


def test_the_commands_refuse_hostile_files_and_exit_non_zero(tmp_path, trained):
    """Each command as its console script runs it (Hydra's error handling and exit code), all in one subprocess."""
    ase.io.write(tmp_path / "in.xyz", [rattled("H2O")])
    found = {name: hostile_checkpoint(trained, tmp_path, name)
             for name in ("torch_load", "copyfile", "torch_save", "plugin_savetxt", "nested")}
    pickled = tmp_path / "teacher.pkl"
    pickled.write_bytes(pickle.dumps(Touch(tmp_path / "marker-run-folder")))
    hostile_run = run_folder_copy(trained, tmp_path, "hostile-run", {"_target_": "torch.load", "f": str(pickled),
                                                                     "weights_only": False})
    weight = checkpoint_of(trained)["state_dict"]["student.representation.embedding.weight"].clone()
    weight[0, 0] = float("nan")
    nan = edited(trained, tmp_path / "nan.ckpt", **{"student.representation.embedding.weight": weight})
    predict = lambda path: ["predict", [f"checkpoint={path}", f"input={tmp_path / 'in.xyz'}",  # noqa: E731
                                        f"output={tmp_path / 'out.xyz'}", "device=cpu"]]
    deploy = lambda path: ["deploy", [f"checkpoint={path}", f"target={tmp_path / 'deployed.pt'}"]]  # noqa: E731
    evaluate = lambda path: ["evaluate", [f"checkpoint={path}", "device=cpu", *NO_SECTIONS]]  # noqa: E731
    cases = {  # one command per attack family; name → (command and overrides, file named, marker)
        "torch_load": (predict(found["torch_load"][0]), *found["torch_load"]),
        "copyfile": (deploy(found["copyfile"][0]), *found["copyfile"]),
        "torch_save": (evaluate(found["torch_save"][0]), *found["torch_save"]),
        "plugin_savetxt": (predict(found["plugin_savetxt"][0]), *found["plugin_savetxt"]),
        "nested": (deploy(found["nested"][0]), *found["nested"]),
        "run_folder": (["evaluate", [f"run={hostile_run}", "device=cpu", *NO_SECTIONS]], hostile_run / "config.yaml",
                       tmp_path / "marker-run-folder"),
        "nan_weights": (predict(nan), nan, tmp_path / "out.xyz"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    plan = json.dumps([[name, *command] for name, (command, _, _) in cases.items()])
    output = subprocess.run([sys.executable, "-c", COMMANDS, plan], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600).stderr
    parts = dict(re.findall(r"^=== (\w+)\n(.*?)^=== exit", output, flags=re.S | re.M))
    codes = dict(re.findall(r"^=== (\w+)\n.*?^=== exit (\S+)", output, flags=re.S | re.M))
    assert sorted(parts) == sorted(cases), output
    for name, (_, path, marker) in cases.items():
        assert codes[name] not in ("0", "None"), (name, parts[name])
        lines = parts[name].splitlines()
        errors = [k for k, line in enumerate(lines) if re.match(r"hessdistill\.\S+Error: ", line)]
        assert len(errors) == 1 and f"Error: {path}: " in lines[errors[0]], (name, parts[name])
        assert not lines[errors[0] + 1:] or not lines[errors[0] + 1].strip(), (name, parts[name])  # one line
        assert not marker.exists(), (name, parts[name])
    assert not (tmp_path / "deployed.pt").exists()


# ---- run folders: the teacher is a record, built by the registry or from the user's own config -------------------
def test_a_run_folder_naming_code_is_refused_before_anything_runs(tmp_path, trained, monkeypatch):
    from hessdistill.cli.evaluate import run

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(Touch(marker)))
    hostile = {
        "torch_load": ({"_target_": "torch.load", "f": str(pickled), "weights_only": False},
                       "refusing to build the teacher 'torch.load': it is neither one of hessdistill's"),
        "attribute_path": ({"_target_": "hessdistill.teachers.ani.torch.load", "f": str(pickled)},
                           "refusing to build the teacher 'hessdistill.teachers.ani.torch.load'"),
        "mace_pickle": ({"_target_": "hessdistill.teachers.mace.MACETeacher", "model": str(pickled), "name": "mace"},
                        f"its teacher 'mace' (MACETeacher) would load model={str(pickled)!r} as code (a pickled model "
                        f"or a class), so it is built only from your own config, never from a run folder: add "
                        f"teacher=<its config> teacher.model=<what you trust>"),
        "chgnet_pickle": ({"_target_": "hessdistill.teachers.chgnet.CHGNetTeacher", "model": str(pickled)},
                          "(CHGNetTeacher) would load model="),
        "fd_calculator": ({"_target_": "hessdistill.teachers.finite_difference.FiniteDifferenceTeacher",
                           "calculator": {"_target_": "torch.load", "f": str(pickled)}, "name": "emt_fd"},
                          "its teacher 'emt_fd' (FiniteDifferenceTeacher) would load calculator="),
        "fd_of_mace": ({"_target_": "hessdistill.teachers.finite_difference.FiniteDifferenceTeacher.from_teacher",
                        "teacher": {"_target_": "hessdistill.teachers.mace.MACETeacher", "model": str(pickled)},
                        "name": "mace_fd"}, "its teacher 'mace_fd' (from_teacher) would load teacher.model="),
        "nested_kwarg": ({"_target_": "hessdistill.teachers.ani.ANITeacher",
                          "info_file": {"_target_": "torch.load", "f": str(pickled)}},
                         "teacher ani kwargs.info_file: has the key '_target_'"),
        "unknown_kwarg": ({"_target_": "hessdistill.teachers.ani.ANITeacher", "modle": "ani1x"},
                          "teacher ani (ANITeacher): got an unexpected keyword argument 'modle'"),
    }
    for name, (teacher, refusal) in hostile.items():
        run_dir = run_folder_copy(trained, tmp_path, name, teacher)
        with pytest.raises(RunFolderError) as error:
            run(compose_config("evaluate", [f"run={run_dir}", *NO_SECTIONS]), str(tmp_path / "eval"))
        one_line(str(error.value), run_dir / "config.yaml")
        assert str(error.value).startswith(f"{run_dir / 'config.yaml'}: ") and refusal in str(error.value), name
    for name, subset in {"interpolation": {"store": "${oc.env:HOME}"},
                         "object": {"split_file": {"_target_": "torch.load", "f": str(pickled)}}}.items():
        run_dir = run_folder_copy(trained, tmp_path, name, subset=subset)
        with pytest.raises(RunFolderError, match=re.escape(f"{run_dir / 'config.yaml'}: subset")):
            run(compose_config("evaluate", [f"run={run_dir}", *NO_SECTIONS]), str(tmp_path / "eval"))
    bomb = tmp_path / "bomb" / "config.yaml"  # aliases: 10⁸ values from a few lines; refused, not walked
    bomb.parent.mkdir()
    bomb.write_text("a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdef", "bcdefg"))
        + "teacher: {_target_: hessdistill.teachers.ani.ANITeacher, model: *g}\n")
    with pytest.raises(RunFolderError, match=r"bomb/config.yaml: teacher ani kwargs.model\S*: more than \d+ values"):
        run(compose_config("evaluate", [f"run={bomb.parent}", *NO_SECTIONS]), str(tmp_path / "eval"))
    assert not marker.exists() and not (tmp_path / "eval").exists()


def test_a_legitimate_run_folder_evaluates_with_its_teacher_from_the_registry(tmp_path, trained, monkeypatch):
    from hessdistill.cli import evaluate

    monkeypatch.chdir(tmp_path)
    run_dir, _ = trained
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["teacher"]["_target_"] == \
        "hessdistill.teachers.ani.ANITeacher"

    def no_hydra(*args, **kwargs):
        raise AssertionError("a run folder's teacher went to Hydra")

    monkeypatch.setattr(evaluate.hydra.utils, "instantiate", no_hydra)
    result = evaluate.run(compose_config("evaluate", [f"run={run_dir}", "device=cpu", *NO_SECTIONS]),
                          str(tmp_path / "eval"))
    assert result["teacher"] == "ani1x" and result["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert result["accuracy"]["teacher_force_mae"] == pytest.approx(0.0, abs=1e-6)  # the store's own teacher
    assert result["accuracy"]["force_mae"] > 0


def test_a_run_whose_teacher_unpickles_evaluates_with_the_users_own_teacher(tmp_path, trained, monkeypatch):
    """The run folder says MACETeacher(model=<pickle that would write a marker>); the user's own teacher=mace
    teacher.model=<their file> builds the teacher, and the run folder's file is never opened."""
    from hessdistill.cli.evaluate import run

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(Touch(marker)))
    mine = tmp_path / "mine.model"
    torch.save(tiny_mace(), mine)
    run_dir = run_folder_copy(trained, tmp_path, "mace-run", {"_target_": "hessdistill.teachers.mace.MACETeacher",
                                                              "model": str(tmp_path / "model.pkl"), "name": "mace"})
    with pytest.raises(RunFolderError, match="built only from your own config"):  # the default teacher is ANI
        run(compose_config("evaluate", [f"run={run_dir}", "device=cpu", *NO_SECTIONS]), str(tmp_path / "eval"))
    result = run(compose_config("evaluate", [f"run={run_dir}", "teacher=mace", f"teacher.model={mine}", "device=cpu",
                                             *NO_SECTIONS]), str(tmp_path / "eval"))
    assert result["teacher"] == "mace" and result["accuracy"]["force_mae"] > 0
    assert not marker.exists()


# ---- checkpoints: records, old checkpoints, your own classes ----------------------------------------------------
def test_checkpoints_record_registry_keys_and_old_checkpoints_still_load(tmp_path, trained):
    checkpoint = checkpoint_of(trained)
    record = checkpoint["hyper_parameters"]["student"]
    assert record["key"] == "painn" and set(record) == {"key", "kwargs"}
    assert record["kwargs"]["hidden_channels"] == 16 and checkpoint["hyper_parameters"]["plugins"] == []
    new = load_student(trained[0] / "checkpoints" / "last.ckpt")
    for target in ("hessdistill.models.painn.PaiNN",):  # what hessdistill wrote before the registry
        old = edited(trained, tmp_path / "old.ckpt", student={"_target_": target, **record["kwargs"]})
        loaded = load_student(old)
        for (name, a), (_, b) in zip(new.state_dict().items(), loaded.state_dict().items()):
            torch.testing.assert_close(a, b, msg=name)
    assert {STUDENTS.written_key(t) for t in STUDENTS.written} == {"painn", "schnet", "gemnet", "escn", "mace"}
    plugin = PLUGINS.from_file({"_target_": "hessdistill.training.plugins.TeacherEmbeddings", "z": [1, 6],
                                "table": [[0.5], [0.25]]})
    assert plugin.key == "teacher_embeddings" and plugin.kwargs == {"z": [1, 6], "table": [[0.5], [0.25]]}
    for near_miss in ("hessdistill.models.painn.PaiNN ", "hessdistill.models.PaiNN", "hessdistill.models.painn"):
        with pytest.raises(RecordError, match="refusing to build the student"):
            STUDENTS.from_file({"_target_": near_miss})


@pytest.fixture
def own_registry(monkeypatch):
    """The student registry as it is now, restored after the test (registrations are process-wide)."""
    for attribute in ("_paths", "_builtin", "_factories"):
        monkeypatch.setattr(STUDENTS, attribute, dict(getattr(STUDENTS, attribute)))


def test_your_own_student_class_loads_once_you_register_it(tmp_path, own_registry):
    from hessdistill.training.module import DistillModule

    config = {"_target_": "conftest.tiny_painn", "force_mode": "direct"}  # your config: Hydra locates the class
    module = DistillModule(config, distill_terms("undistilled"))
    assert module.hparams.student == {"key": "conftest.tiny_painn", "kwargs": {"force_mode": "direct"}}
    path = tmp_path / "mine.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    assert load_student(path).state_dict().keys() == module.student.state_dict().keys()  # the training process
    for attribute in ("_paths", "_factories"):  # another process: only hessdistill's own are registered
        getattr(STUDENTS, attribute).pop("conftest.tiny_painn")
    refusal = re.escape(f"{path}: student 'conftest.tiny_painn' is not registered (hessdistill's: escn, gemnet, mace, "
                        f"painn, schnet); if it is your own class, call hessdistill.register_student("
                        f"'conftest.tiny_painn', YourClass) in your code before loading")
    with pytest.raises(CheckpointError, match=f"^{refusal}$"):
        load_student(path)
    hd.register_student("tiny", tiny_painn)  # registered under a key: checkpoints record the key
    assert DistillModule(config, distill_terms("undistilled")).hparams.student["key"] == "tiny"
    with pytest.raises(CheckpointError, match="'conftest.tiny_painn' is not registered"):
        load_student(path)
    hd.register_student("conftest.tiny_painn", tiny_painn)
    torch.testing.assert_close(load_student(path).state_dict(), module.student.state_dict())
    with pytest.raises(ValueError, match="student 'painn' is registered already"):
        hd.register_student("painn", tiny_painn)
    with pytest.raises(RecordError, match=r"^student painn \(PaiNN\): got an unexpected keyword argument "
                                          r"'hidden_chanels'$"):
        STUDENTS.build(STUDENTS.from_file({"key": "painn", "kwargs": {"hidden_chanels": 16}}))


@pytest.mark.parametrize("value, refusal", [
    ({"a": {"_partial_": True}}, r"kwargs.a: has the key '_partial_'"),
    ({"a": [{"_args_": [1]}]}, r"kwargs.a\[0\]: has the key '_args_'"),
    ({1: 2}, r"kwargs: has the key 1, not a string"),
    ({"a": torch.zeros(2)}, r"kwargs.a: is a Tensor, not plain data"),
    ({"a": b"bytes"}, r"kwargs.a: is a bytes, not plain data"),
    ({"a": [[[[[[[[[[1]]]]]]]]]]}, rf"nested more than {MAX_DEPTH} deep"),
])
def test_keyword_arguments_from_a_file_must_be_plain_data(value, refusal):
    with pytest.raises(RecordError, match=refusal):
        check_plain(value)
    check_plain({"cutoff": 4.0, "radial_mlp": [32, 32], "max_neighbors": None, "force_mode": "direct", "ok": True})


def test_teacher_records_are_rebuilt_by_the_registry():
    from hessdistill.evaluation.run_folder import run_teacher

    fd = run_teacher({"_target_": "hessdistill.teachers.finite_difference.FiniteDifferenceTeacher.from_teacher",
                      "teacher": {"_target_": "hessdistill.teachers.ani.ANITeacher", "model": "ani1x"},
                      "name": "ani1x_fd", "delta": None, "max_batch": 16}, "config.yaml")
    assert fd.code is None and fd.record.key == "finite_difference_of" and fd.parts["teacher"].record.key == "ani"
    teacher = fd.build()
    assert teacher.name == "ani1x_fd" and teacher.model.name == "ani1x" and teacher.max_batch == 16
    bundled = run_teacher({"_target_": "hessdistill.teachers.chgnet.CHGNetTeacher", "model": None}, "config.yaml")
    assert bundled.code is None  # CHGNet's weights from its wheel: data enough
    assert TEACHERS.key_for_target("hessdistill.teachers.mace.MACETeacher") == "mace"


# ---- a full disk during training leaves the previous checkpoints whole --------------------------------------------
def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, labelled_store, monkeypatch):
    from lightning.fabric.plugins.io import torch_io

    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    real, saves, before = torch_io._atomic_save, [], {}

    def disk_fills(checkpoint, path):
        saves.append(str(path))
        if len(saves) <= 2:  # epoch 1: best.ckpt and last.ckpt
            return real(checkpoint, path)
        before.update({p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")})
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with open(path, "wb") as handle:  # half the bytes reach the disk, then it is full
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_io, "_atomic_save", disk_fills)
    with pytest.raises(OSError, match="No space left on device"):
        run(compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "subset.batch_size=4",
                                     "subset.split=[0.5,0.25,0.25]", f"logger.0.save_dir={tmp_path}", "test=false",
                                     "deploy.enabled=false", "trainer.max_epochs=2", *TINY]), str(tmp_path / "run"))
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(before) == ["best.ckpt", "last.ckpt"] and len(saves) == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # intact, and no side file left
    for name in before:
        load_student(folder / name)
