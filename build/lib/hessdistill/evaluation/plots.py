"""Figures of an evaluation, as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parity_plot(path: str | Path, arrays: dict, metrics: dict, title: str = "") -> Path:
    """Energy per atom (meV/atom) and force component (eV/Å) parity of student (and teacher) vs reference."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    panels = [("energy", "e", 1e3, "energy per atom − mean (meV/atom)", "energy_mae", "meV/atom"),
              ("forces", "f", 1.0, "force component (eV/Å)", "force_mae", "meV/Å")]
    for ax, (_, key, scale, label, metric, unit) in zip(axes, panels):
        ref = arrays[f"{key}_ref"]
        shift = ref.mean() if key == "e" else 0.0  # total energies per atom share a large offset
        for who, colour in (("teacher", "tab:gray"), ("student", "tab:blue")):
            pred = arrays.get(f"{key}_{who}")
            if pred is None:
                continue
            mae = metrics[metric if who == "student" else f"teacher_{metric}"]
            ax.scatter(scale * (ref - shift), scale * (pred - shift), s=6, alpha=0.5, color=colour,
                       label=f"{who} (MAE {mae:.1f} {unit})")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def spectrum_plot(path: str | Path, spectra: list[dict], title: str = "") -> Path:
    """Student vs teacher harmonic wavenumbers (cm⁻¹) of each relaxed structure, mode by mode."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for s in spectra:
        ax.scatter(s["teacher_cm1"], s["student_cm1"], s=10, label=s["name"])
    every = np.concatenate([np.concatenate([s["teacher_cm1"], s["student_cm1"]]) for s in spectra])
    lo, hi = float(every.min()) - 50, float(every.max()) + 50
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    ax.set_xlabel("teacher wavenumber (cm⁻¹)")
    ax.set_ylabel("student wavenumber (cm⁻¹)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def md_plot(path: str | Path, md: dict, max_deviation: float = 0.5) -> Path:
    """NVT: max bond deviation (Å) vs time, × at failures; NVE: total energy per atom change (meV/atom) vs time."""
    with_nve = any(runs["nve"] for runs in md.values())
    fig, axes = plt.subplots(1, 2 if with_nve else 1, figsize=(11 if with_nve else 5.5, 4.4), squeeze=False)
    colours = {"student": "tab:blue", "teacher": "tab:gray"}
    for name, runs in md.items():
        colour = colours.get(name)
        for k, run in enumerate(runs["nvt"]):
            axes[0, 0].plot(run["times_ps"], run["max_bond_deviation_A"], color=colour, lw=0.8,
                            label=name if k == 0 else None)
            if run["time_to_failure_ps"] is not None:
                axes[0, 0].scatter([run["time_to_failure_ps"]], [run["max_bond_deviation_A"][-1]], marker="x",
                                   color=colour)
        for k, run in enumerate(runs["nve"]):
            e = 1e3 * (np.asarray(run["total_energy_eV_per_atom"]) - run["total_energy_eV_per_atom"][0])
            axes[0, 1].plot(run["times_ps"], e, color=colour, lw=0.8, label=name if k == 0 else None)
    axes[0, 0].axhline(max_deviation, color="tab:red", lw=0.8, ls="--")
    axes[0, 0].set_xlabel("time (ps)")
    axes[0, 0].set_ylabel("max bond length deviation (Å)")
    axes[0, 0].set_title("NVT stability")
    axes[0, 0].legend(fontsize=8)
    if with_nve:
        axes[0, 1].set_xlabel("time (ps)")
        axes[0, 1].set_ylabel("total energy change (meV/atom)")
        axes[0, 1].set_title("NVE energy conservation")
        axes[0, 1].legend(fontsize=8)
    return _save(fig, path)
