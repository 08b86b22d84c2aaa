"""The generated reference pages: every config key with the comment written beside it (or marked as having none),
every console script on the command-line page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


config_reference = _load("config_reference")
cli_reference = _load("cli_reference")

SAMPLE = """\
# A sample command: what it does.
#   sample-command key=value      # an example
defaults:
  - teacher: ani1x
  - _self_
plain: 1                  # a plain key
wrapped: auto             # a comment that goes on
                          # on the next line
# the comment above a key
above: true
bare: 3
store: ${subset.store}
flow: {a: 1, b: two,      # a flow mapping
       c: null}           # over two lines
block:
  _target_: some.Class
  inner: x                # an inner key
quoted: "a # not a comment"
"""


@pytest.fixture
def sample(tmp_path):
    (tmp_path / "sample.yaml").write_text(SAMPLE)
    return config_reference.read_config(tmp_path / "sample.yaml", tmp_path)


def test_each_key_takes_the_comment_beside_above_or_below_it(sample):
    meaning = {e.key: e.meaning for e in sample.entries}
    assert meaning["plain"] == "a plain key"
    assert meaning["wrapped"] == "a comment that goes on on the next line"
    assert meaning["above"] == "the comment above a key"
    assert meaning["flow"] == "a flow mapping over two lines"
    assert meaning["flow.a"] == meaning["flow.c"] == "see `flow`"
    assert meaning["block.inner"] == "an inner key"
    assert meaning["store"] == "follows `subset.store`"
    assert meaning["block._target_"] == config_reference.SELF_EXPLAINED["_target_"]


def test_a_key_without_a_comment_is_marked_and_listed(sample):
    entries = {e.key: e for e in sample.entries}
    assert entries["bare"].missing and entries["bare"].meaning == config_reference.MISSING
    assert entries["quoted"].missing and entries["quoted"].default == "a # not a comment"
    assert config_reference.missing([sample]) == ["sample.yaml: bare", "sample.yaml: quoted"]


def test_header_defaults_and_values(sample):
    assert sample.description.startswith("A sample command: what it does.")
    assert "sample-command key=value" in sample.description.split("```")[1]
    assert sample.defaults == ["teacher: ani1x", "_self_"]
    assert "defaults" not in {e.key for e in sample.entries}
    assert {e.key: e.default for e in sample.entries}["wrapped"] == "auto"


def test_group_options_are_keyed_by_their_override_path(tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "tiny.yaml").write_text("hidden_channels: 8   # width\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nrows: 2   # s\n")
    configs = {c.name: c for c in config_reference.read_configs(tmp_path)}
    assert [e.key for e in configs["student/tiny"].entries] == ["student.hidden_channels"]
    assert [e.key for e in configs["experiment/mine"].entries] == ["rows"]


def test_a_key_explained_in_one_option_explains_it_in_the_others(tmp_path):
    (tmp_path / "subset").mkdir()
    (tmp_path / "subset" / "a.yaml").write_text("split: [0.8, 0.1, 0.1]   # train, val, test fractions\n")
    (tmp_path / "subset" / "b.yaml").write_text("split: [0.5, 0.25, 0.25]\nname: b\n")
    configs = {c.name: c for c in config_reference.read_configs(tmp_path)}
    entries = {e.key: e for e in configs["subset/b"].entries}
    assert entries["subset.split"].meaning == "train, val, test fractions (as in `subset/a.yaml`)"
    assert not entries["subset.split"].missing and entries["subset.name"].missing


def test_every_key_of_the_shipped_configs_is_on_the_page():
    from hessdistill.config import CONFIG_DIR

    configs = config_reference.read_configs(CONFIG_DIR)
    page = config_reference.markdown(configs)
    train = YAML().load((Path(CONFIG_DIR) / "train.yaml").read_text())
    for key in ("seed", "rows", "weights.hessian", "datamodule.row_floor", "callbacks.ema.decay", "hydra.sweep.subdir"):
        assert f"| `{key}` |" in page, key
    for key in train["weights"]:
        assert f"| `weights.{key}` |" in page, key
    files = sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in Path(CONFIG_DIR).rglob("*.yaml"))
    assert sorted(c.name for c in configs) == files


def test_every_console_script_is_on_the_command_line_page():
    commands = cli_reference.read_commands(ROOT / "pyproject.toml")
    page = cli_reference.markdown(commands)
    scripts = cli_reference.console_scripts(ROOT / "pyproject.toml")
    assert [c.name for c in commands] == list(scripts)
    by_name = {c.name: c for c in commands}
    assert by_name["hessdistill-train"].config == "train"
    for name in scripts:
        assert f"## `{name}`" in page
