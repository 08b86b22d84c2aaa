"""Learning curves of training runs from their CSV logs (Lightning's ``CSVLogger``: ``<run dir>/csv/version_*/
metrics.csv``): the figure ``hessdistill-train`` leaves in its run folder (validation force MAE in meV/Å and training
loss against epoch, a line per run), and the comparison of variants over seeds (``plot_learning_curves``: per label
the mean curve of its runs over the epochs all of them reached, with their minimum–maximum band).

Built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot's global state (``evaluation.plots``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hessdistill.evaluation.plots import _save

Curve = dict[int, float]  # epoch (0-based) → value

# each panel: the metrics it plots (the first one logged), its axis label
PANELS = ((("val/force_mae",), "validation force MAE (meV/Å)"),
          (("train/epoch_loss", "train/loss"), "training loss (λ-weighted sum of the terms)"))
KD_WEIGHT = "train/weight_hessian"  # λ_KD per step: its changes are marked on a single run's curves


def read_metrics_csv(path: str | Path) -> dict[str, Curve]:
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


def read_curve(run_dir: str | Path, metric: str = "val/force_mae") -> Curve:
    """epoch → ``metric`` of a run, from every metrics.csv under ``run_dir`` (versions in name order: a later
    version's value of an epoch replaces an earlier one's). Raises FileNotFoundError naming the directory when it
    has no CSV log, ValueError when no row logs the metric."""
    files = sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: (len(p.parts), str(p)))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv (runs log them with logger=csv)")
    curve: Curve = {}
    for path in files:
        curve.update(read_metrics_csv(path).get(metric, {}))
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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
