"""What a file may name: students, student plugins and teachers by registry key, mapped to classes in code.

A checkpoint or a training run's folder is data. It names what to build by a key of one of the registries here
(``painn``, ``teacher_embeddings``, ``ani``, …) and gives keyword arguments that must be plain data (None, bools,
numbers, strings, and lists and string-keyed dicts of those; no Hydra keys such as ``_target_``). The arguments are
bound against the class's signature, then the class is called directly: nothing a file says is imported, located or
passed to Hydra.

Your own classes join by registering them from your own code, which you vouch for by importing it::

    import hessdistill
    hessdistill.register_student("mynet", MyNet)      # also register_plugin, register_teacher

A training config naming a class by ``_target_`` (``student._target_: mypkg.MyNet``: your config, so Hydra may locate
it) records the key the class is registered under, or its dotted path ``mypkg.MyNet`` when it is not registered;
loading that checkpoint in another process then needs ``register_student("mypkg.MyNet", MyNet)`` first (the training
process registers it itself).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hessdistill.errors import HessdistillError

MAX_DEPTH = 8  # nesting of lists and dicts in a record's keyword arguments
MAX_ITEMS = 2_000_000  # values in all (a teacher-embedding table of 118 elements × 1024 features fits)
HYDRA_KEY = re.compile(r"^_.+_$")  # _target_, _partial_, _args_, _recursive_, _convert_: Hydra builds from these


class RecordError(HessdistillError, ValueError):
    """A record of what to build that is refused; the message says why in one line (callers prefix the file)."""


@dataclass(frozen=True)
class Record:
    """What to build: a registry ``key`` and plain keyword arguments. ``as_dict`` is the form files keep."""

    key: str
    kwargs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"key": self.key, "kwargs": self.kwargs}


def check_plain(value, where: str = "kwargs") -> None:
    """RecordError naming the place unless ``value`` is plain data: None, bool, int, float, str, and lists and
    str-keyed dicts of those without Hydra keys, at most ``MAX_DEPTH`` deep and ``MAX_ITEMS`` values in all."""
    stack, count = [(value, where, 0)], 0
    while stack:
        value, where, depth = stack.pop()
        count += 1
        if count > MAX_ITEMS:
            raise RecordError(f"{where}: more than {MAX_ITEMS} values; a record holds settings, not data")
        if depth > MAX_DEPTH:
            raise RecordError(f"{where}: nested more than {MAX_DEPTH} deep; a record holds settings, not data")
        if value is None or type(value) in (bool, int, float, str):
            continue
        if type(value) in (list, tuple):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif type(value) is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise RecordError(f"{where}: has the key {key!r}, not a string")
                if HYDRA_KEY.match(key):
                    raise RecordError(f"{where}: has the key {key!r}; keyword arguments from a file are plain data, "
                                      f"and nothing a file names is built")
                stack.append((item, f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]", depth + 1))
        else:
            raise RecordError(f"{where}: is a {type(value).__name__}, not plain data (None, bool, number, string, "
                              f"list or dict)")


def dotted_path(factory: Callable) -> str:
    """``module.qualname`` of a class or function (a classmethod's is its class's path and its name)."""
    owner = getattr(factory, "__self__", None)
    if inspect.isclass(owner):
        return f"{owner.__module__}.{owner.__qualname__}.{factory.__name__}"
    return f"{factory.__module__}.{factory.__qualname__}"


class Registry:
    """Keys → classes (or factory functions) of one kind. ``builtin``: key → ``"module:qualname"`` of this
    package's own, written in code and imported on first use (a student checkpoint need not import MACE)."""

    def __init__(self, kind: str, builtin: Mapping[str, str]) -> None:
        self.kind = kind
        self._paths = {key: path.replace(":", ".") for key, path in builtin.items()}
        self._builtin = dict(builtin)
        self._factories: dict[str, Callable] = {}
        # the _target_ strings hessdistill itself has written into files (old checkpoints, run folders): exactly
        # these convert to keys, by string equality
        self.written = {path: key for key, path in self._paths.items()}

    def register(self, key: str, factory: Callable, replace: bool = False) -> None:
        """Make ``factory`` (a class, or a function returning the object) buildable as ``key``; ``replace``: take
        over a key that is registered already (one of hessdistill's own included)."""
        if not isinstance(key, str) or not key or HYDRA_KEY.match(key):
            raise ValueError(f"a {self.kind} key must be a non-empty string, not a Hydra key; got {key!r}")
        if not callable(factory):
            raise TypeError(f"register_{self.kind}({key!r}, …) needs a class or function, got {factory!r}")
        if key in self and not replace and self.factory(key) is not factory:
            raise ValueError(f"{self.kind} {key!r} is registered already (as {self._paths[key]}); pass replace=True "
                             f"to take it over")
        self._factories[key], self._paths[key] = factory, dotted_path(factory)
        self._builtin.pop(key, None)

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key in self._paths

    def keys(self) -> list[str]:
        return sorted(self._paths)

    def factory(self, key: str) -> Callable:
        """The class or function registered as ``key``; RecordError when there is none."""
        if key not in self:
            raise RecordError(f"{self.kind} {key!r} is not registered (hessdistill's: {', '.join(self.keys())}); if "
                              f"it is your own class, call hessdistill.register_{self.kind}({key!r}, YourClass) in "
                              f"your code before loading")
        if key not in self._factories:
            module, _, qualname = self._builtin[key].partition(":")
            found = importlib.import_module(module)  # a constant of this module, never a string from a file
            for name in qualname.split("."):
                found = getattr(found, name)
            self._factories[key] = found
        return self._factories[key]

    def name(self, key: str) -> str:
        """What a user calls ``key``'s class (its class name; the key itself when not registered)."""
        return self._paths[key].rsplit(".", 1)[-1] if key in self else key

    def key_of(self, factory: Callable) -> str | None:
        """The key ``factory`` is registered under (the first, by key), or None."""
        path = dotted_path(factory)
        return next((key for key in self.keys() if self._paths[key] == path and self.factory(key) is factory), None)

    def written_key(self, target) -> str:
        """The key of a ``_target_`` read from a file: one hessdistill writes, exactly, or a key registered in this
        process; RecordError otherwise."""
        key = self.written.get(target) if isinstance(target, str) else None
        key = key or (target if target in self else None)
        if key is None:
            raise RecordError(f"refusing to build the {self.kind} {target!r}: it is neither one of hessdistill's "
                              f"({', '.join(self.written)}) nor registered with hessdistill.register_{self.kind}, "
                              f"and nothing a file names is imported")
        return key

    def from_file(self, data) -> Record:
        """What a file names, as a Record: ``{"key": …, "kwargs": {…}}``, or the ``{"_target_": …, **kwargs}`` form
        hessdistill wrote before, whose target must be one of ``written`` exactly, or a key registered in this
        process. Refuses anything else, and arguments that are not plain data."""
        if not isinstance(data, dict):
            raise RecordError(f"its {self.kind} record is a {type(data).__name__}, not a dict")
        if "_target_" in data:
            key = self.written_key(data["_target_"])
            kwargs = {k: v for k, v in data.items() if k != "_target_"}
        else:
            if set(data) != {"key", "kwargs"} or not isinstance(data["kwargs"], dict):
                raise RecordError(f"its {self.kind} record has the fields {sorted(map(str, data))}, not a key and a "
                                  f"dict of kwargs")
            key, kwargs = data["key"], data["kwargs"]
            if key not in self:
                self.factory(key)  # raises, naming the key and how to register it
        check_plain(kwargs, f"{self.kind} {key} kwargs")
        return Record(key, kwargs)

    def from_config(self, config: Mapping) -> tuple[Record, Callable]:
        """A config of your own (``_target_`` and keyword arguments, Hydra style: code you vouch for) as the Record
        a file keeps and the factory that builds it. The target is a registered class's dotted path, or located by
        Hydra (your own class); the Record's key is the one it is registered under, else its dotted path, under
        which it is then registered in this process (so the run deploys its own checkpoint; another process loading
        it registers it itself)."""
        config = dict(config)
        target = config.pop("_target_", None)
        if not isinstance(target, str):
            raise RecordError(f"a {self.kind} config needs _target_ (the class's dotted path), got {target!r}")
        key = self.key_for_target(target)
        if key is not None:
            factory = self.factory(key)
        else:
            import hydra

            factory = hydra.utils.get_method(target)
            key = self.key_of(factory) or target
            self.register(key, factory)
        check_plain(config, f"{self.kind} {key} config (recorded in checkpoints, so plain data)")
        return Record(key, config), factory

    def bind(self, record: Record, factory: Callable | None = None, **parts) -> Callable:
        """The factory of ``record.key`` (or ``factory``) once the record's keyword arguments are plain data and,
        with ``parts`` (objects built from records of their own, e.g. the teacher a finite-difference teacher
        wraps), fit its signature; RecordError naming an unknown or missing argument otherwise."""
        factory = factory or self.factory(record.key)
        check_plain(record.kwargs, f"{self.kind} {record.key} kwargs")
        try:
            inspect.signature(factory).bind(**record.kwargs, **parts)
        except TypeError as exc:
            raise RecordError(f"{self.kind} {record.key} ({self.name(record.key)}): {exc}") from None
        return factory

    def build(self, record: Record, factory: Callable | None = None, **parts):
        """Call the factory of ``record.key`` (or ``factory``) with the record's arguments and ``parts``, bound
        first (``bind``): the one way anything is built from a record."""
        return self.bind(record, factory, **parts)(**record.kwargs, **parts)

    def key_for_target(self, target: str) -> str | None:
        """The key whose class has the dotted path ``target`` (a config's ``_target_``), by string equality."""
        return next((key for key in self.keys() if self._paths[key] == target), None)


STUDENTS = Registry("student", {
    "painn": "hessdistill.models.painn:PaiNN",
    "schnet": "hessdistill.models.schnet:SchNet",
    "gemnet": "hessdistill.models.gemnet:GemNet",
    "escn": "hessdistill.models.escn:ESCN",
    "mace": "hessdistill.models.mace_student:MACEStudent",
})
PLUGINS = Registry("plugin", {"teacher_embeddings": "hessdistill.training.plugins:TeacherEmbeddings"})
TEACHERS = Registry("teacher", {
    "ani": "hessdistill.teachers.ani:ANITeacher",
    "mace": "hessdistill.teachers.mace:MACETeacher",
    "mace_foundation": "hessdistill.teachers.mace:MACEFoundationTeacher",
    "sevennet": "hessdistill.teachers.sevennet:SevenNetTeacher",
    "torchsim": "hessdistill.teachers.torchsim:TorchSimTeacher",
    "chgnet": "hessdistill.teachers.chgnet:CHGNetTeacher",
    "finite_difference": "hessdistill.teachers.finite_difference:FiniteDifferenceTeacher",
    "finite_difference_of": "hessdistill.teachers.finite_difference:FiniteDifferenceTeacher.from_teacher",
})


def register_student(key: str, cls: Callable, replace: bool = False) -> None:
    """Let checkpoints name your student class ``cls`` (a ``ForceField``) by ``key``."""
    STUDENTS.register(key, cls, replace)


def register_plugin(key: str, cls: Callable, replace: bool = False) -> None:
    """Let checkpoints name your student plugin ``cls`` (``apply(student, datamodule) -> kwargs``) by ``key``."""
    PLUGINS.register(key, cls, replace)


def register_teacher(key: str, cls: Callable, replace: bool = False) -> None:
    """Let training run folders name your teacher class ``cls`` by ``key``. A teacher that loads code from a file
    (a pickled model) sets ``code_argument`` to that argument's name: it is then built only from your own config."""
    TEACHERS.register(key, cls, replace)
