"""A training run's folder read as data (``hessdistill-evaluate run=<dir>``): its teacher, subset, split and
checkpoint, with nothing in it run as code.

The run's ``config.yaml`` is parsed as plain YAML (no interpolations or resolvers) and no part of it goes to Hydra.
Only the subset's data settings are taken (store, split, split file, …; the store code checks the store), and the
teacher is rebuilt from its record through the teacher registry (``hessdistill.registry.TEACHERS``): its ``_target_``
must be exactly one that hessdistill's teacher configs write (or a key registered in this process) and its arguments
plain data. A teacher that would load code from what the record names (``Teacher.code_argument``: a MACE ``.model``
or CHGNet file, which their packages unpickle; an ASE calculator class) is built only from your own config::

    hessdistill-evaluate run=<dir> teacher=mace teacher.model=<a .model file you trust>
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hessdistill.data.labels import REFERENCES
from hessdistill.errors import HessdistillError
from hessdistill.registry import TEACHERS, Record, RecordError, check_plain

RUN_CONFIG = "config.yaml"  # the resolved config of a run, in its directory (written by hessdistill-train)
TEST_CHECKPOINTS = ("last", "best")  # test_ckpt: the checkpoint whose EMA weights a run tests and deploys
MAX_BYTES = 4 * 2**20  # a run's config is a few kB; a larger one is not what hessdistill-train writes
MAX_NESTING = 3  # teachers wrapping teachers (finite differences of a model)
SUBSET_FIELDS = ("name", "store", "split", "split_seed", "split_by", "split_file", "batch_size", "eval_batch_size")


class RunFolderError(HessdistillError, ValueError):
    """A run folder whose records cannot be used; the message names the file, in one line."""


@dataclass(frozen=True)
class RunTeacher:
    """A run folder's teacher: its Record, the RunTeachers of teachers it wraps (argument → RunTeacher), and
    ``code``: the argument (``model``, ``teacher.model``, …) through which it would load code from what the record
    names (``code_value``, shown), if any; such a teacher only the user's own config builds."""

    record: Record
    parts: dict = field(default_factory=dict)
    code: str | None = None
    code_value: str | None = None

    @property
    def name(self) -> str:
        return str(self.record.kwargs.get("name") or self.record.key)

    def build(self):
        """The teacher, built from the record (never for a teacher with ``code``)."""
        assert self.code is None, "a teacher that loads code is built from the user's own config only"
        return TEACHERS.build(self.record, **{name: part.build() for name, part in self.parts.items()})


@dataclass(frozen=True)
class TrainingRun:
    """What evaluation takes from a run folder: the subset's data settings, the split file, the tested checkpoint and
    the teacher (None: the user's own teacher config builds it, the run's teacher loading code)."""

    subset: dict
    split_file: Path
    checkpoint: Path
    teacher: RunTeacher | None
    reference: str = "dft"


def training_run(run_dir: Path, user_teacher: str | None) -> TrainingRun:
    """The run folder ``run_dir`` read as data. ``user_teacher``: the ``_target_`` of the user's own teacher config,
    which builds the teacher when the run's would load code (and must then be of the same kind)."""
    config = read_run_config(run_dir)
    path = run_dir / RUN_CONFIG
    teacher = run_teacher(config.get("teacher"), path)
    if teacher.code is not None:
        teacher_from_user(teacher, user_teacher, path)
    return TrainingRun(run_subset(config, path), run_dir / "splits.json",
                       run_dir / "checkpoints" / f"{tested_checkpoint(config, path)}.ckpt",
                       None if teacher.code is not None else teacher, run_reference(config, path))


def run_reference(config: dict, path: Path) -> str:
    """What the run's student was trained against (``reference``: dft, or teacher for distillation without DFT)."""
    reference = config.get("reference", "dft")
    if reference not in REFERENCES:
        raise RunFolderError(f"{path}: reference is {reference!r}, not one of {REFERENCES}")
    return reference


def tested_checkpoint(config: dict, path: Path) -> str:
    """Which checkpoint the run's test metrics are of (``test_ckpt``: last or best; last before it existed)."""
    name = config.get("test_ckpt", "last")
    if name not in TEST_CHECKPOINTS:
        raise RunFolderError(f"{path}: test_ckpt is {name!r}, not one of {TEST_CHECKPOINTS}")
    return name


def evaluation_dir(run: str | Path | None, checkpoint: str | Path | None, split: str) -> Path | None:
    """Where an evaluation of a training run goes: ``<run>/evaluation/<split>`` (another checkpoint than the run's
    ``last.ckpt``: ``<split>-<checkpoint name>``), the run being ``run`` or the run folder whose ``checkpoints/``
    holds ``checkpoint``. None when neither names a run folder (one with a ``config.yaml``)."""
    checkpoint = Path(checkpoint) if checkpoint else None
    if run is None and checkpoint is not None and checkpoint.parent.name == "checkpoints":
        run = checkpoint.parent.parent
    if run is None or not (Path(run) / RUN_CONFIG).is_file():
        return None
    name = split if checkpoint is None or checkpoint.name == "last.ckpt" else f"{split}-{checkpoint.stem}"
    return Path(run) / "evaluation" / name


def read_run_config(run_dir: Path) -> dict:
    """The run's ``config.yaml`` as plain containers (FileNotFoundError when ``run_dir`` is not a run folder)."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"run={run_dir}: not a training run directory (no {RUN_CONFIG})")
    if path.stat().st_size > MAX_BYTES:
        raise RunFolderError(f"{path}: {path.stat().st_size} bytes, not a run config that hessdistill-train writes")
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not a YAML run config ({(str(exc).splitlines() or [''])[0]})") from None
    if not isinstance(config, dict):
        raise RunFolderError(f"{path}: not a run config (a YAML {type(config).__name__}, not a mapping)")
    return config


def run_subset(config: dict, path: Path) -> dict:
    """The data settings of the run's subset (store, split, split file, …), plain data."""
    subset = config.get("subset")
    if not isinstance(subset, dict) or "store" not in subset:
        raise RunFolderError(f"{path}: has no subset with a store")
    taken = {k: subset[k] for k in SUBSET_FIELDS if k in subset}
    try:
        check_plain(taken, "subset")
    except RecordError as exc:
        raise RunFolderError(f"{path}: {exc}") from None
    # they join an OmegaConf config, which would resolve interpolations; hessdistill-train writes resolved values
    if (key := next((k for k, v in taken.items() if "${" in str(v)), None)) is not None:
        raise RunFolderError(f"{path}: subset.{key} holds an interpolation (${{…}}), which a run's resolved config "
                             f"does not")
    return taken


def run_teacher(config, path: Path, depth: int = 0) -> RunTeacher:
    """The run's teacher record ``config`` (a ``_target_`` config, as config.yaml keeps it), checked: RunFolderError
    naming ``path`` for a target that is not one of hessdistill's (or registered), arguments that are not plain data
    or do not fit the class. A teacher that would load code from what the record names comes back with ``code`` set,
    unchecked beyond that: it is never built from the record."""
    if depth > MAX_NESTING:
        raise RunFolderError(f"{path}: its teacher wraps teachers more than {MAX_NESTING} deep")
    if not isinstance(config, dict):
        raise RunFolderError(f"{path}: its teacher is a {type(config).__name__}, not a teacher config")
    config = dict(config)
    try:
        code = getattr(TEACHERS.factory(TEACHERS.written_key(config.get("_target_"))), "code_argument", None)
        held = config.pop(code, None) if code else None  # never used: not checked as data
        inner = config.pop("teacher") if isinstance(config.get("teacher"), dict) else None
        parts = {} if inner is None else {"teacher": run_teacher(inner, path, depth + 1)}
        record = TEACHERS.from_file(config)
        if held is not None:
            return RunTeacher(record, parts, code, repr(held)[:100])
        if (wrapped := next((p for p in parts.values() if p.code), None)) is not None:
            return RunTeacher(record, parts, f"teacher.{wrapped.code}", wrapped.code_value)
        TEACHERS.bind(record, **parts)
    except RecordError as exc:
        raise RunFolderError(f"{path}: {exc}") from None
    return RunTeacher(record, parts)


def teacher_from_user(teacher: RunTeacher, target, path: Path) -> None:
    """Refuse, in one line naming ``path``, to evaluate a run whose teacher loads code (``teacher.code``) unless
    the user's own teacher config (its ``_target_`` ``target``) is of the same kind: that config builds it."""
    if TEACHERS.key_for_target(target) != teacher.record.key:
        raise RunFolderError(f"{path}: its teacher {teacher.name!r} ({TEACHERS.name(teacher.record.key)}) would load "
                             f"{teacher.code}={teacher.code_value} as code (a pickled model or a class), so it is "
                             f"built only from your own config, never from a run folder: add teacher=<its config> "
                             f"teacher.{teacher.code}=<what you trust>")
