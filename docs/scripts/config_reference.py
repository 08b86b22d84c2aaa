"""The configuration reference, generated from the YAML files themselves: every key of every config file with its
default and the comment written beside it (or above it), so the reference cannot drift from the configs.

A key's meaning is, in order: the comment lines directly above it, the comment at the end of its line (with the
comment-only lines below that continue it), and for a value written over several lines (a flow mapping) every
comment on those lines. Keys inside a flow mapping share their parent's comment. Hydra's own keys (``_target_``,
``_partial_``) and values that only point at another key (``${subset.store}``) explain themselves. Every other key
without a comment is listed as such (``MISSING``) so it can be filled in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

MISSING = "*(no comment yet)*"
SECTION = "*(the keys below)*"
SELF_EXPLAINED = {"_target_": "the class or function Hydra builds", "_partial_": "built later with more arguments",
                  "_args_": "positional arguments of `_target_`"}
INTERPOLATION = re.compile(r"^\$\{([^}:]+)\}$")
COMMENT = re.compile(r"""^(?P<code>(?:[^#'"]|'[^']*'|"[^"]*")*?)\s+#\s?(?P<text>.*)$""")
FULL_LINE = re.compile(r"^(?P<indent>\s*)#\s?(?P<text>.*)$")
GROUP_ORDER = ("student", "teacher", "subset", "distill", "augment", "experiment", "trainer", "logger",
               "hydra/launcher")


@dataclass
class Entry:
    key: str          # the dotted override path, e.g. ``datamodule.row_floor``
    default: str      # the value as written (mappings: empty, their keys follow)
    meaning: str      # the comment, or MISSING
    missing: bool


@dataclass
class ConfigFile:
    path: Path
    name: str         # ``train`` or ``student/painn``
    description: str  # the file's header comment
    defaults: list[str]
    entries: list[Entry]


def trailing_comment(line: str) -> tuple[str, int] | None:
    """The comment at the end of a line of YAML and the column of its '#', or None (quoted '#' is not one)."""
    if FULL_LINE.match(line):
        return None
    match = COMMENT.match(line)
    return (match["text"].strip(), len(match["code"]) + line[len(match["code"]):].index("#")) if match else None


def _comments_above(lines: list[str], row: int, column: int, header_end: int) -> list[str]:
    """Comment-only lines directly above a key, indented as the key is (deeper ones continue the line above)."""
    texts = []
    while row - 1 >= header_end and (match := FULL_LINE.match(lines[row - 1])) and len(match["indent"]) == column:
        texts.insert(0, match["text"].strip())
        row -= 1
    return texts


def _comment_of_line(lines: list[str], row: int, column: int) -> list[str]:
    """The end-of-line comment of ``row`` and the comment-only lines below it indented deeper than the key at
    ``column`` (its continuation; a comment at the key's own indentation introduces the next key)."""
    found = trailing_comment(lines[row])
    if found is None:
        return []
    texts = [found[0]]
    for line in lines[row + 1:]:
        match = FULL_LINE.match(line)
        if not match or len(match["indent"]) <= column:
            break
        texts.append(match["text"].strip())
    return texts


def _last_row(node, row: int) -> int:
    """The last line a value spans (the last line any of its keys or items starts on)."""
    if isinstance(node, CommentedMap):
        for key in node:
            row = max(row, node.lc.value(key)[0], _last_row(node[key], node.lc.value(key)[0]))
    elif isinstance(node, CommentedSeq):
        for k, item in enumerate(node):
            row = max(row, node.lc.item(k)[0], _last_row(item, node.lc.item(k)[0]))
    return row


def _show(value) -> str:
    """A value as written; empty for a mapping or a list of mappings (their keys are listed on their own)."""
    if isinstance(value, CommentedMap) and len(value) or isinstance(value, CommentedSeq) and any(
            isinstance(v, CommentedMap) for v in value):
        return ""
    if isinstance(value, (CommentedSeq, list)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _inline(value) -> str:
    """A value in flow style, mappings included (for the defaults list)."""
    if isinstance(value, CommentedMap):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    return _show(value)


def _is_flow(node) -> bool:
    return bool(getattr(node, "fa", None) and node.fa.flow_style())


def _entries(node, prefix: str, lines: list[str], header_end: int, inherited: str | None,
             root: bool = False) -> list[Entry]:
    out = []
    if isinstance(node, CommentedSeq):
        for k, item in enumerate(node):
            out += _entries(item, f"{prefix}{k}.", lines, header_end, inherited, root)
        return out
    if not isinstance(node, CommentedMap):
        return out
    flow = _is_flow(node)
    for key, value in node.items():
        if key == "defaults" and root:
            continue
        row, column = node.lc.key(key)
        path = f"{prefix}{key}"
        if flow:
            texts = [inherited] if inherited else []
            meaning = f"see `{prefix.rstrip('.')}`" if inherited else ""
        else:
            texts = _comments_above(lines, row, column, header_end) + _comment_of_line(lines, row, column)
            if _is_flow(value):
                for other in range(row + 1, _last_row(value, row) + 1):
                    texts += [t for t in _comment_of_line(lines, other, column) if t not in texts]
            meaning = " ".join(texts)
        shown = _show(value)
        if not meaning and str(key) in SELF_EXPLAINED:
            meaning = SELF_EXPLAINED[str(key)]
        if not meaning and (match := INTERPOLATION.match(shown)):
            meaning = f"follows `{match[1]}`"
        if not meaning and not shown:
            meaning = SECTION  # a block of keys, each listed below
        out.append(Entry(path, shown, meaning or MISSING, not meaning))
        child_comment = " ".join(texts) if not flow else inherited
        out += _entries(value, f"{path}.", lines, header_end, child_comment or None)
    return out


def _header(lines: list[str]) -> tuple[str, int]:
    """The file's leading comment block (its description, as Markdown: indented lines are commands, shown as code)
    and the first line after it."""
    prose, code, row = [], [], 0
    while row < len(lines) and (match := FULL_LINE.match(lines[row])):
        text = match["text"]
        if text.startswith((" ", "\t")):
            code.append(text.strip())
        elif not text.startswith("@package"):
            prose.append(text.strip())
        row += 1
    block = ["", "```", *code, "```"] if code else []
    return "\n".join([" ".join(prose), *block]).strip(), row


def _package(lines: list[str], name: str) -> str:
    """The key prefix of a file's entries: the group's path, the root for primary configs and ``_global_`` ones."""
    if any(line.startswith("# @package _global_") for line in lines[:3]) or "/" not in name:
        return ""
    return name.rsplit("/", 1)[0].replace("/", ".") + "."


def read_config(path: Path, config_dir: Path) -> ConfigFile:
    """One config file with its description, its defaults list and every key."""
    text = path.read_text()
    lines = text.splitlines()
    name = path.relative_to(config_dir).with_suffix("").as_posix()
    description, header_end = _header(lines)
    tree = YAML().load(text)
    defaults = []
    if isinstance(tree, CommentedMap) and "defaults" in tree:
        defaults = [_inline(item) if isinstance(item, str) else
                    ", ".join(f"{k}: {_inline(v)}" for k, v in item.items()) for item in tree["defaults"]]
    entries = _entries(tree, _package(lines, name), lines, header_end, None, root=True)
    return ConfigFile(path, name, description, defaults, entries)


def read_configs(config_dir: str | Path) -> list[ConfigFile]:
    """Every config file under ``config_dir``: the commands' configs first, then each group's options. A key
    without a comment takes the comment the same key has in another file (e.g. ``subset.split`` of every subset
    from the one that explains it), saying which."""
    config_dir = Path(config_dir)
    files = [read_config(p, config_dir) for p in sorted(config_dir.rglob("*.yaml"))]
    order = {g: k for k, g in enumerate(GROUP_ORDER)}
    files = sorted(files, key=lambda f: ("/" in f.name, order.get(f.name.rsplit("/", 1)[0], 99), f.name))
    explained = {}
    for config in files:
        for entry in config.entries:
            if not entry.missing and not entry.meaning.startswith(("see `", "*(")):
                explained.setdefault(entry.key, (entry.meaning, config.name))
    for config in files:
        for entry in config.entries:
            if entry.missing and entry.key in explained:
                meaning, source = explained[entry.key]
                entry.meaning, entry.missing = f"{meaning} (as in `{source}.yaml`)", False
    return files


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(configs: list[ConfigFile]) -> str:
    """The reference page: one section per command config and per group, one table row per key."""
    out = ["# Configuration reference", "",
           "Generated from the YAML files of `conf/` at build time (`docs/scripts/config_reference.py`):",
           "each key's meaning is the comment written beside it. Set any key on the command line as "
           "`key=value` (e.g. `hessdistill-train datamodule.row_floor=0.1`), pick a group's option as "
           "`group=option` (`student=schnet`), and see the composed config of a command with "
           "`hessdistill-train --cfg job`.", "",
           f"A key marked {MISSING} has no comment in its file yet.", ""]
    section = None
    for config in configs:
        group = config.name.rsplit("/", 1)[0] if "/" in config.name else "commands"
        if group != section:
            section = group
            title = "Commands" if group == "commands" else f"Group `{group}`"
            out += [f"## {title}", ""]
            if group != "commands":
                choice = group.replace("hydra/launcher", "hydra/launcher")
                out += [f"Choose with `{choice}=<option>`.", ""]
        heading = f"`{config.name}.yaml`" if group == "commands" else f"`{group}={config.name.rsplit('/', 1)[1]}`"
        out += [f"### {heading}", ""]
        if config.description:
            out += [config.description, ""]
        if config.defaults:
            out += ["Composed from: " + ", ".join(f"`{d}`" for d in config.defaults), ""]
        if config.entries:
            out += ["| key | default | meaning |", "|---|---|---|"]
            out += [f"| `{e.key}` | `{_cell(e.default)}` | {_cell(e.meaning)} |" if e.default else
                    f"| `{e.key}` | | {_cell(e.meaning)} |" for e in config.entries]
            out.append("")
    return "\n".join(out)


def missing(configs: list[ConfigFile]) -> list[str]:
    """``file: key`` for every key without a comment."""
    return [f"{c.name}.yaml: {e.key}" for c in configs for e in c.entries if e.missing]


if __name__ == "__main__":  # the keys still to comment: python docs/scripts/config_reference.py
    from hessdistill.config import CONFIG_DIR

    print("\n".join(missing(read_configs(CONFIG_DIR))))
