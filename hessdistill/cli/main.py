"""``hessdistill``: the package's version and what ships with it; the work is done by the ``hessdistill-<command>``
commands (hessdistill-train, -precompute, -evaluate, -predict, -deploy, -onpolicy, -label, -demo).

    hessdistill --version
    hessdistill list                      # teachers, students, subsets and experiments
    hessdistill list teachers             # one of them: teachers | students | subsets | experiments

``list`` reads the shipped configs (``teacher=<name>`` and so on, each with the first line of its comment) and the
registries (the classes checkpoints and run folders may name); it imports no model code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hessdistill.cli.entry import version

GROUPS = {"teachers": ("teacher", "TEACHERS"), "students": ("student", "STUDENTS"), "subsets": ("subset", None),
          "experiments": ("experiment", None)}


def description(path: Path) -> str:
    """The first line of a config file's leading comment (its ``# @package`` line skipped), without the ``#``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def listing(what: str, width: int = 120) -> str:
    """The configs of group ``what`` (teachers, students, subsets, experiments) as ``name  description`` lines, and
    the registry's keys where the group has one."""
    from hessdistill import registry
    from hessdistill.config import CONFIG_DIR

    group, registry_name = GROUPS[what]
    files = sorted(Path(CONFIG_DIR, group).glob("*.yaml"))
    name_width = max((len(f.stem) for f in files), default=0)
    lines = [f"{what} ({group}=<name>):"]
    for path in files:
        line = f"  {path.stem:<{name_width}}  {description(path)}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    if registry_name is not None:
        keys = getattr(registry, registry_name).keys()
        lines.append(f"  registered {group} classes (the keys checkpoints and run folders name; add yours with "
                     f"hessdistill.register_{group}): {', '.join(keys)}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hessdistill", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version())
    sub = p.add_subparsers(dest="command", metavar="list")
    shown = sub.add_parser("list", help="the teachers, students, subsets and experiments that ship with hessdistill")
    shown.add_argument("what", nargs="*", metavar="{" + ",".join(GROUPS) + "}", help="what to list (default: all)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser().print_help()
        return
    if unknown := [what for what in args.what if what not in GROUPS]:
        parser().error(f"hessdistill list {' '.join(unknown)}: choose from {', '.join(GROUPS)}")
    print("\n\n".join(listing(what) for what in (args.what or GROUPS)))


if __name__ == "__main__":
    main()
