"""What every console command does before and around its work: ``--version``, ``--help`` without the heavy imports,
known third-party noise silenced, and errors of our own as one line.

``--help`` and ``--version`` are answered before torch, Lightning or MACE are imported: a command's module (which
imports them) is imported only to run it. ``--help`` is Hydra's, with hessdistill's template
(``conf/hydra/help/hessdistill.yaml``): the command's description, the config groups it composes and its config.

Errors of our own end the command with one line, ``error: <message>``, on stderr and exit status 2, without a
traceback; ``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the traceback. The rule (``our_message``): an error is ours
when it is

* a ``HessdistillError`` (every error class of the package: StoreError, CheckpointError, RecordError,
  RunFolderError, InvalidStructureError, UnseenElementError, DeployError, DeployedFileError, MemoryEstimateError,
  UnsupportedElementError, …);
* a ValueError or ModuleNotFoundError raised by hessdistill's own code (its checks of your settings; an optional
  extra that is not installed), or such an error raised while Hydra built one of its classes;
* a file or folder you named that cannot be opened (FileNotFoundError, IsADirectoryError, NotADirectoryError,
  PermissionError), wherever it was found;
* a config error of Hydra or OmegaConf: a key that is mandatory and missing (checked before anything heavy is
  loaded), an unknown group option or key, an override that does not parse.

Anything else is a bug or a failure of a library, and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hessdistill.errors import HessdistillError
from hessdistill.quiet import quiet_dependencies

EXIT_REFUSED = 2  # the exit status of a command that refused its input (argparse's, for a usage error)
HELP_FLAGS = ("--help", "-h", "--hydra-help")
DEBUG_FLAG = "--debug"
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
PLACEHOLDERS = {"checkpoint": "<training checkpoint, e.g. outputs/…/checkpoints/last.ckpt>",
                "input": "<structure file>", "output": "<extxyz file to write>"}


@dataclass(frozen=True)
class Command:
    """A console command: ``hessdistill-<name>``, its module (``hessdistill.cli.<name>``, whose ``main`` is a Hydra
    app, or a function of argv when ``hydra`` is False) and, for a Hydra app, its config ``conf/<name>.yaml``."""

    name: str
    hydra: bool = True
    flags: bool = False  # its module's ``overrides_from_flags(argv)`` turns earlier --flags into key=value

    @property
    def program(self) -> str:
        return f"hessdistill-{self.name}"

    @property
    def module(self) -> str:
        return f"hessdistill.cli.{self.name}"


COMMANDS = {c.name: c for c in (Command("train"), Command("precompute"), Command("evaluate"), Command("predict"),
                                Command("deploy"), Command("onpolicy"), Command("label", flags=True),
                                Command("demo", hydra=False), Command("summarize", hydra=False),
                                Command("fetch", hydra=False))}


def version() -> str:
    from hessdistill import __version__

    return f"hessdistill {__version__}"


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _raised_by_us(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback (where it was raised) is hessdistill's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _package_dir() in Path(tb.tb_frame.f_code.co_filename).resolve().parents


DETAIL_LINES = ("Config search path", "full_key:", "object_type=", "reference_type=", "See https://hydra.cc")


def _one_line(text: str) -> str:
    """A message of several lines as one: the lines after one ending in ':' (a list) joined by commas, OmegaConf's
    and Hydra's detail lines (search path, full_key, object_type) left out."""
    out: list[str] = []
    listing = False
    for line in (line.strip() for line in str(text).splitlines()):
        if line.startswith(DETAIL_LINES):
            listing = line.startswith("Config search path")  # the provider lines that follow go too
            if listing:
                break
            continue
        if not line:
            listing = False
            continue
        if listing and out:
            out[-1] += (" " if out[-1].endswith(":") else ", ") + line
        else:
            out.append(line)
        listing = listing or line.endswith(":")
    return " ".join(out)


def our_message(exc: BaseException) -> str | None:
    """The one line an error of our own is reported as (the rule in the module docstring); None for any other."""
    from hydra.errors import HydraException, InstantiationException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        return our_message(exc.__cause__)
    if isinstance(exc, HessdistillError) or isinstance(exc, PATH_ERRORS):
        return _one_line(exc)
    if isinstance(exc, (ValueError, ModuleNotFoundError)) and _raised_by_us(exc):
        return _one_line(exc)
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{first} (config key {key})" if key and str(key) not in first else first
    if isinstance(exc, OverrideParseException):
        return f"the override {exc.override} does not parse: {_one_line(exc)}"
    if isinstance(exc, HydraException):
        cause = exc.__cause__
        return _one_line(f"{exc} {cause}" if isinstance(cause, OmegaConfBaseException) else exc)
    return None


class MissingSettingError(HessdistillError, ValueError):
    """A mandatory key (``???`` in the command's config) the command line did not set."""


def check_mandatory(cfg, program: str) -> None:
    """Refuse, naming them, the command's own mandatory keys that are still ``???``: before its module and model are
    loaded (a group's mandatory keys are left to the code that uses them)."""
    from omegaconf import OmegaConf

    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]  # in the config's order
    if missing:
        wanted = " ".join(f"{key}={PLACEHOLDERS.get(key, '<value>')}" for key in missing)
        raise MissingSettingError(f"{program} needs {wanted} (see {program} --help)")


def _debugging(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _refuse(message: str) -> None:
    sys.stdout.flush()  # what the command printed before comes first
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_REFUSED)


@contextmanager
def _reported(debug: bool):
    """Errors of our own as one ``error:`` line and exit status 2 (tracebacks under ``debug``)."""
    try:
        yield
    except Exception as exc:
        message = None if debug else our_message(exc)
        if message is None:
            raise
        _refuse(message)


@contextmanager
def _argv(argv: list[str]):
    """``sys.argv`` as Hydra reads it: the program as started (Lightning starts DDP processes with it) and ``argv``."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "hessdistill", *argv]
    try:
        yield
    finally:
        sys.argv = saved


@contextmanager
def _hydra_errors_raised(user_value: str | None):
    """HYDRA_FULL_ERROR=1 while Hydra composes the config, so that its config errors reach ``_reported`` instead of
    being printed over several lines; the user's own setting again once the command runs (``_restore``)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        _restore(user_value)


def _restore(user_value: str | None) -> None:
    if user_value is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = user_value


def _hydra_app(command: Command, work: Callable | None, user_value: str | None, debug: bool):
    """Hydra's app for ``command`` (its config, its job name): ``work(cfg)`` after the mandatory keys are checked,
    errors of our own reported inside the job (so a sweep's log says which job); None: compose only (help)."""
    import hydra

    from hessdistill.config import CONFIG_DIR

    def task(cfg):
        _restore(user_value)  # what the job and any process it starts see is the user's setting
        if work is None:
            return None
        with _reported(debug):
            check_mandatory(cfg, command.program)
            return work(cfg)

    task.__module__, task.__qualname__, task.__name__ = command.module, "main", "main"  # Hydra's job name
    return hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=command.name)(task)


def _module_main(command: Command) -> Callable:
    """The command's own work: its module's Hydra task function (undecorated), or its argv main."""
    main = importlib.import_module(command.module).main
    if command.hydra:
        _lightning_through_hydra()
        return getattr(main, "__wrapped__", main)
    return main


def _lightning_through_hydra() -> None:
    """Lightning, imported after Hydra set up logging, sends its lines to Hydra's handlers (the console and the job's
    log file) and to a console handler of its own: that one goes, so each line shows once."""
    if "lightning" in sys.modules and logging.getLogger().handlers:
        lightning = logging.getLogger("lightning")
        for handler in [h for h in lightning.handlers if type(h) is logging.StreamHandler]:
            lightning.removeHandler(handler)


def run(name: str, argv: list[str] | None = None) -> None:
    """Run ``hessdistill-<name>`` with ``argv`` (default: the process's arguments)."""
    command = COMMANDS[name]
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version" in argv:
        print(version())
        return
    debug = _debugging(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    quiet_dependencies()
    if not command.hydra:
        with _reported(debug):
            _module_main(command)(argv)
        return
    if command.flags:
        with _reported(debug):
            argv = importlib.import_module(command.module).overrides_from_flags(argv)
    user_value = os.environ.get("HYDRA_FULL_ERROR")
    helping = any(arg in HELP_FLAGS for arg in argv)
    work = None if helping else (lambda cfg: _module_main(command)(cfg))
    from hydra.core.global_hydra import GlobalHydra

    try:
        with _argv(argv), _reported(debug), _hydra_errors_raised(user_value):
            _hydra_app(command, work, user_value, debug)()
    finally:
        GlobalHydra.instance().clear()  # a later command or hd.compose in this process starts afresh


def _entry(name: str) -> Callable[[], None]:
    def main() -> None:
        run(name)

    main.__name__ = main.__qualname__ = name
    main.__doc__ = f"The ``hessdistill-{name}`` console script."
    return main


(train, precompute, evaluate, predict, deploy, onpolicy, label, demo, summarize,
 fetch) = (_entry(name) for name in COMMANDS)
