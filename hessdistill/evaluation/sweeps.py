"""A sweep of training runs as one table (``hessdistill-summarize``, ``hd.summarize``): the settings that differ
between runs, their test metrics with units, and the mean ± sample standard deviation over seeds.

Every folder under the given one that ``hessdistill-train`` wrote (it holds ``run_info.json``) is a run: a Hydra
multirun (``multirun/<time>``), or ``outputs/`` with many single runs. A run's settings are the overrides it was
started with (``.hydra/overrides.yaml``); where a run has none (started from Python), its resolved ``config.yaml``,
flattened. Run folders are data: their files are parsed as plain JSON and YAML, nothing in them is run, and a file
that cannot be read leaves its run out of the table with a one-line reason (``skipped``).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hessdistill.evaluation.run_folder import MAX_BYTES, RunFolderError, read_run_config
from hessdistill.metrics import metric_label
from hessdistill.tables import markdown_table

RUN_MARKER = "run_info.json"  # hessdistill-train writes it into a run folder before training
METRICS = ("force_mae", "energy_mae", "hessian_mae", "teacher_force_mae")  # test metrics of metrics.json, tabled
DERIVED = ("run_name",)  # config keys that only repeat others


@dataclass
class Run:
    """One run: its folder, settings (key → value as text) and test metrics (name → value in its unit, see
    ``hessdistill.metrics``; None: the run has not finished), and its epochs."""

    path: Path
    settings: dict[str, str]
    metrics: dict[str, float] | None
    epochs: int | None = None


@dataclass
class SweepSummary:
    """The runs of a sweep grouped by the settings that differ (``varied``) except ``over`` (seeds): ``groups`` holds
    one dict per setting, its values, ``n`` (finished runs), ``unfinished``, and ``<metric>_mean`` / ``<metric>_std``
    (sample standard deviation, None for one run) of each metric. ``str()`` is the table (Markdown)."""

    root: Path
    runs: list[Run]
    varied: list[str]
    common: dict[str, str]
    over: tuple[str, ...]
    groups: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The header line, the shared settings, the table and the runs left out, a blank line between."""
        shown = [m for m in METRICS if any(g[f"{m}_mean"] is not None for g in self.groups)]
        keys = [k for k in self.varied if k not in self.over]
        rows = [[*(g[k] for k in keys), *(_mean_std(g[f"{m}_mean"], g[f"{m}_std"]) for m in shown),
                 f"{g['n']}" + (f" (+{g['unfinished']} unfinished)" if g["unfinished"] else "")]
                for g in self.groups]
        over = ", ".join(k for k in self.over if k in self.varied) or "runs"
        blocks = [f"{self.root}: {len(self.runs)} runs, {len(self.groups)} settings; test split, mean ± sample std "
                  f"over {over} (n runs)"]
        if self.common:
            blocks.append("same in every run: " + " ".join(f"{k}={v}" for k, v in self.common.items()))
        blocks.append(markdown_table([*keys, *(metric_label(m) for m in shown), "n"], rows))
        if self.skipped:
            blocks.append("\n".join(f"skipped {reason}" for reason in self.skipped))
        return "\n\n".join(blocks)

    __str__ = table
    _repr_markdown_ = table  # Jupyter shows the table rendered

    def write_csv(self, path: str | Path) -> Path:
        """The groups as CSV: the varied settings, n, unfinished, each metric's mean and std."""
        path = Path(path)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.groups[0]) if self.groups else ["n"])
            writer.writeheader()
            writer.writerows(self.groups)
        return path


def _mean_std(mean: float | None, std: float | None) -> str:
    """``74.4 ± 2.4``: the mean to three significant digits, the std to the same decimals; ``—`` for no value."""
    if mean is None:
        return "—"
    decimals = max(0, 2 - math.floor(math.log10(abs(mean)))) if mean else 2
    return f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")


def find_runs(root: Path) -> list[Path]:
    """The run folders under ``root`` (``root`` itself when it is one), in path order."""
    if (root / RUN_MARKER).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(RUN_MARKER))


def read_overrides(run_dir: Path) -> dict[str, str] | None:
    """The Hydra overrides a run was started with (``key=value`` lines of ``.hydra/overrides.yaml``) as key → value;
    None when the run has no such file."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        overrides = yaml.safe_load(path.read_text()) if path.stat().st_size <= MAX_BYTES else None
    except (yaml.YAMLError, UnicodeDecodeError):
        overrides = None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise RunFolderError(f"{path}: not a list of Hydra overrides (key=value)")
    settings = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        settings[key.lstrip("+~")] = value if sep else "(deleted)"
    return settings


def flat_config(run_dir: Path) -> dict[str, str]:
    """The run's resolved ``config.yaml`` as dotted key → value text (lists as one value)."""
    out = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = str(node) if not isinstance(node, str) else node

    walk(read_run_config(run_dir), "")
    return out


def read_metrics(run_dir: Path) -> tuple[dict[str, float] | None, int | None]:
    """A finished run's test metrics (name without ``test/`` → value) and epochs from its ``metrics.json``; (None,
    None) while it has none (running, or killed)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None, None
    if path.stat().st_size > MAX_BYTES:
        raise RunFolderError(f"{path}: {path.stat().st_size} bytes, not the metrics.json hessdistill-train writes")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not JSON ({exc})") from None
    test = data.get("test") if isinstance(data, dict) else None
    if not isinstance(test, dict):
        return {}, data.get("epochs") if isinstance(data, dict) else None
    metrics = {k.removeprefix("test/"): float(v) for k, v in test.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    epochs = data.get("epochs")
    return metrics, epochs if isinstance(epochs, int) else None


def summarize(root: str | Path, over: tuple[str, ...] = ("seed",)) -> SweepSummary:
    """The runs under ``root`` as a ``SweepSummary``, grouped over the settings ``over`` (seeds)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (a multirun folder, or a folder of training runs)")
    runs, skipped, overrides = [], [], {}
    for run_dir in find_runs(root):
        try:
            metrics, epochs = read_metrics(run_dir)
            overrides[run_dir] = read_overrides(run_dir)
            runs.append(Run(run_dir, {}, metrics, epochs))
        except (RunFolderError, OSError) as exc:
            skipped.append(str(exc))
    if not runs:
        raise FileNotFoundError(f"{root}: no training runs under it (folders with {RUN_MARKER})")
    from_config = any(overrides[r.path] is None for r in runs)
    for r in list(runs):
        try:
            r.settings = flat_config(r.path) if from_config else overrides[r.path]
        except (RunFolderError, OSError) as exc:
            runs.remove(r)
            skipped.append(str(exc))
    varied, common = split_settings(runs, from_config)
    summary = SweepSummary(root, runs, varied, common, tuple(over), skipped=skipped)
    summary.groups = group_runs(runs, [k for k in varied if k not in over])
    return summary


def split_settings(runs: list[Run], from_config: bool) -> tuple[list[str], dict[str, str]]:
    """The keys whose values differ between runs (a key missing from a run counts as a value) and the settings all
    runs share. From configs, keys that repeat a shorter one's grouping (``datamodule.seed`` beside ``seed``) are left
    out, and the shared settings are not listed (a config has hundreds)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.settings))
    values = {k: [r.settings.get(k, "—") for r in runs] for k in keys}
    varied = [k for k in keys if len(set(values[k])) > 1 and k not in DERIVED]
    common = {} if from_config else {k: values[k][0] for k in keys if k not in varied}
    if from_config:
        seen, kept = {}, []
        for key in sorted(varied, key=len):
            grouping = tuple(values[key].index(v) for v in values[key])  # same pattern ⇔ same partition of the runs
            if grouping not in seen:
                seen[grouping] = key
                kept.append(key)
        varied = [k for k in varied if k in kept]
    return varied, common


def _order(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_runs(runs: list[Run], keys: list[str]) -> list[dict]:
    """One dict per combination of ``keys``' values, ordered by them (numbers numerically)."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.settings.get(k, "—") for k in keys), []).append(r)
    out = []
    for values in sorted(groups, key=lambda v: [_order(x) for x in v]):
        members = groups[values]
        finished = [r for r in members if r.metrics is not None]
        row = {**dict(zip(keys, values)), "n": len(finished), "unfinished": len(members) - len(finished)}
        for name in METRICS:
            numbers = [r.metrics[name] for r in finished if name in r.metrics]
            row[f"{name}_mean"] = float(np.mean(numbers)) if numbers else None
            row[f"{name}_std"] = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else None
        epochs = [r.epochs for r in finished if r.epochs is not None]
        row["epochs_mean"] = float(np.mean(epochs)) if epochs else None
        out.append(row)
    return out

