"""Learning curves of one or several training runs from their CSV logs (Lightning's ``metrics.csv``): validation force
MAE (meV/Å) and training loss against epoch, the figure ``hessdistill-train`` leaves in its run folder.

Built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot's global state (``evaluation.plots``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hessdistill.evaluation.plots import _save

# each panel: the metrics it plots (the first one logged), its axis label
PANELS = ((("val/force_mae",), "validation force MAE (meV/Å)"),
          (("train/epoch_loss", "train/loss"), "training loss (λ-weighted sum of the terms)"))
KD_WEIGHT = "train/weight_hessian"  # λ_KD per step: its changes are marked on a single run's curves


def read_metrics_csv(path: str | Path) -> dict[str, dict[int, float]]:
    """A CSV log's metrics: name → {epoch (0-based): value}; a metric logged at several steps of an epoch (training
    losses) gives the mean of its values there. Cells that are empty or not numbers are skipped."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue
            for key, cell in row.items():
                if key in ("epoch", "step") or not cell:
                    continue
                try:
                    values[key][epoch].append(float(cell))
                except ValueError:
                    continue
    return {key: {epoch: float(np.mean(v)) for epoch, v in sorted(by_epoch.items())}
            for key, by_epoch in values.items()}


def wide(values: np.ndarray) -> bool:
    """Whether values span more than a factor of ten (and are positive): drawn on a log axis."""
    return bool(values.min() > 0 and values.max() > 10 * values.min())


def run_label(path: str | Path) -> str:
    """A short name for the run a ``metrics.csv`` belongs to: the nearest folder above it that holds the run's
    ``config.yaml``, else the file's folder."""
    path = Path(path).resolve()
    return next((p.name for p in path.parents if (p / "config.yaml").is_file()), path.parent.name)


def learning_curve_figure(runs: Mapping[str, str | Path] | Sequence[str | Path], title: str = "") -> Figure:
    """Validation force MAE (meV/Å) and training loss against epoch (1-based), a line per run. runs: label →
    ``metrics.csv`` path, or the paths alone (labelled by ``run_label``). A single run's λ_KD changes are marked."""
    runs = dict(runs) if isinstance(runs, Mapping) else {run_label(p): p for p in runs}
    logs = {label: read_metrics_csv(path) for label, path in runs.items()}
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, (keys, label) in zip(axes, PANELS):
        for name, metrics in logs.items():
            key = next((k for k in keys if metrics.get(k)), None)
            if key is not None:
                epochs, values = zip(*metrics[key].items())
                ax.plot(np.add(epochs, 1), values, marker="." if len(epochs) < 30 else None, label=name)
        if not ax.lines:
            ax.text(0.5, 0.5, f"not logged ({' or '.join(keys)})", ha="center", va="center", transform=ax.transAxes)
        elif wide(np.concatenate([line.get_ydata() for line in ax.lines])):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    if len(logs) == 1:
        mark_kd_changes(axes, next(iter(logs.values())))
    if len(logs) > 1 or any(line.get_label() == "λ_KD halved" for line in axes[0].lines):
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def mark_kd_changes(axes, metrics: dict[str, dict[int, float]]) -> None:
    """A dotted line on every panel at each epoch whose λ_KD differs from the one before (a halving)."""
    weights = metrics.get(KD_WEIGHT, {})
    epochs = sorted(weights)
    changes = [e for before, e in zip(epochs, epochs[1:]) if weights[e] != weights[before]]
    for ax in axes:
        for k, epoch in enumerate(changes):
            ax.axvline(epoch + 1, color="gray", ls=":", lw=1, label="λ_KD halved" if k == 0 else None)


def write_learning_curves(path: str | Path, runs: Mapping[str, str | Path] | Sequence[str | Path],
                          title: str = "") -> Path:
    """``learning_curve_figure`` written as a PNG to ``path``."""
    return _save(learning_curve_figure(runs, title), path)
