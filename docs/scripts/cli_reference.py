"""The command-line reference, generated from the commands themselves: every console script of pyproject.toml with
its module's docstring and, for a Hydra command, the config it composes (its keys are in the configuration
reference); for an argparse command, its ``--help``.

Nothing is run: a Hydra command is recognised by reading its module (``@hydra.main(config_name=...)``), and an
argparse command's help comes from its ``parse_args(["--help"])``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the docs extra installs tomli there
    import tomli as tomllib


@dataclass
class Command:
    name: str             # the console script, e.g. hessdistill-train
    module: str           # hessdistill.cli.train
    doc: str              # the module docstring as Markdown
    config: str | None    # the Hydra config it composes (train), or None
    help: str | None      # an argparse command's --help (its description is the docstring)


def console_scripts(pyproject: Path) -> dict[str, str]:
    """``[project.scripts]``: script name → ``module:function``."""
    return tomllib.loads(pyproject.read_text())["project"]["scripts"]


def hydra_config_name(source: str) -> str | None:
    """The ``config_name`` of the ``@hydra.main`` decorator in a module's source, if it has one."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("hydra.main"):
                    for keyword in decorator.keywords:
                        if keyword.arg == "config_name" and isinstance(keyword.value, ast.Constant):
                            return keyword.value.value
    return None


def argparse_help(module: str, name: str) -> str | None:
    """The ``--help`` text of a module with a ``parse_args(argv)`` function (as the command ``name`` prints it), else
    None."""
    parse_args = getattr(importlib.import_module(module), "parse_args", None)
    if parse_args is None:
        return None
    out, argv0 = io.StringIO(), sys.argv[0]
    sys.argv[0] = name  # argparse's prog
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parse_args(["--help"])
    finally:
        sys.argv[0] = argv0
    return out.getvalue()


def rst_to_markdown(doc: str) -> str:
    """Docstring conventions to Markdown: ``code`` to `code`; indented lines stay code blocks."""
    return re.sub(r"``([^`]+)``", r"`\1`", inspect.cleandoc(doc))


def read_commands(pyproject: Path) -> list[Command]:
    commands = []
    for name, target in console_scripts(pyproject).items():
        module, function = target.split(":")
        if module == "hessdistill.cli.entry":  # the light wrapper of every command: its work is in cli/<function>
            module = f"hessdistill.cli.{function}"
        source = Path(importlib.util.find_spec(module).origin).read_text()
        config = hydra_config_name(source)
        doc = ast.get_docstring(ast.parse(source)) or ""
        commands.append(Command(name, module, rst_to_markdown(doc), config,
                                None if config else argparse_help(module, name)))
    return commands


def markdown(commands: list[Command]) -> str:
    out = ["# Command-line reference", "",
           "Generated at build time from each command's module (`docs/scripts/cli_reference.py`). Commands built "
           "on Hydra take `key=value` overrides and `group=option` choices of their config (every key with its "
           "meaning: [configuration reference](config.md)); `--cfg job` prints the composed config, `-m`/"
           "`--multirun` sweeps comma-separated values. Every command has a Python twin in "
           "[`hessdistill`](api.md).", ""]
    for command in commands:
        out += [f"## `{command.name}`", ""]
        if command.help:  # argparse's help holds the docstring as its description
            out += ["```text", command.help.rstrip(), "```", ""]
            continue
        out += [command.doc, ""]
        if command.config:
            out += [f"Config: `{command.config}.yaml` (keys: [reference](config.md#{command.config}yaml)). "
                    f"Module: `{command.module}`.", ""]
    return "\n".join(out)
