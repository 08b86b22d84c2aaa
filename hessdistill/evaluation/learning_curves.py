"""Learning curves of training runs: a validation metric per epoch from each run's CSV log (Lightning's
``CSVLogger``: ``<run dir>/csv/version_*/metrics.csv``), and one figure of several runs (matplotlib's object API,
no pyplot state or backend switch).

Runs given under one label (e.g. the seeds of a variant) are drawn as their mean over the epochs all of them
reached, with their minimum–maximum band.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

Curve = dict[int, float]  # epoch → value


def read_curve(run_dir: str | Path, metric: str = "val/force_mae") -> Curve:
    """epoch → ``metric`` of a run, from every metrics.csv under ``run_dir`` (versions in name order: a later
    version's value of an epoch replaces an earlier one's). Raises FileNotFoundError naming the directory when it
    has no CSV log, ValueError when no row logs the metric."""
    files = sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: (len(p.parts), str(p)))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv (runs log them with logger=csv)")
    curve: Curve = {}
    for path in files:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get(metric) not in (None, "") and row.get("epoch") not in (None, ""):
                    curve[int(float(row["epoch"]))] = float(row[metric])
    if not curve:
        raise ValueError(f"{run_dir}: its metrics.csv logs no {metric!r}")
    return dict(sorted(curve.items()))


def mean_curve(curves: Iterable[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """epochs, mean, minimum and maximum over ``curves`` at the epochs every curve has."""
    curves = list(curves)
    epochs = np.array(sorted(set.intersection(*(set(c) for c in curves))))
    values = np.array([[c[int(e)] for e in epochs] for c in curves])
    return epochs, values.mean(0), values.min(0), values.max(0)


def plot_learning_curves(path: str | Path, runs: dict[str, list[Curve]], metric: str = "val/force_mae",
                         unit: str = "meV/Å", log_y: bool = True, title: str = "") -> Path:
    """One axes: per label, the mean curve of its runs (and their min–max band when several), ``metric`` against
    epoch; a PNG at ``path``."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for label, curves in runs.items():
        epochs, mean, low, high = mean_curve(curves)
        (line,) = ax.plot(epochs + 1, mean, label=f"{label} ({len(curves)} run{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            ax.fill_between(epochs + 1, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
