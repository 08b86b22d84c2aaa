"""Figures of an evaluation, as PNG files.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never through pyplot's global state,
so importing or calling this module leaves the user's backend alone (a notebook keeps showing its figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _readable(ax) -> None:
    """At most five ticks per axis, so long energy values do not overlap."""
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))


def element_offsets(energy: np.ndarray, composition: np.ndarray) -> np.ndarray:
    """Per-structure reference energies (M,) eV from a least-squares fit of ``energy`` (M,) eV against the element
    counts ``composition`` (M, E): what is left after subtracting them is what a model has to get right. One
    composition (a single molecule) reduces to the mean energy."""
    coefficients, *_ = np.linalg.lstsq(composition, energy, rcond=None)
    return composition @ coefficients


def parity_plot(path: str | Path, arrays: dict, metrics: dict, title: str = "") -> Path:
    """Energy per atom (meV/atom, after removing per-element reference energies fitted to the reference) and force
    component (eV/Å) parity of the student (and the teacher) against the reference labels.

    arrays: ``e_ref``/``e_student``/``e_teacher`` (M,) eV/atom, ``natoms`` (M,), ``composition`` (M, E) element
    counts, ``f_ref``/``f_student``/``f_teacher`` (3·Ntot,) eV/Å; a missing teacher is skipped."""
    fig = Figure(figsize=(10, 4.6))
    axes = fig.subplots(1, 2)
    natoms = arrays["natoms"]
    offset = element_offsets(arrays["e_ref"] * natoms, arrays["composition"]) / natoms  # eV/atom
    panels = [("e", 1e3, offset, "energy per atom − fitted element references (meV/atom)", "energy_mae",
               "meV/atom"),
              ("f", 1.0, 0.0, "force component (eV/Å)", "force_mae", "meV/Å")]
    for ax, (key, scale, shift, label, metric, unit) in zip(axes, panels):
        ref = scale * (arrays[f"{key}_ref"] - shift)
        for who, colour in (("teacher", "tab:gray"), ("student", "tab:blue")):
            pred = arrays.get(f"{key}_{who}")
            if pred is None:
                continue
            mae = metrics[metric if who == "student" else f"teacher_{metric}"]
            ax.scatter(ref, scale * (pred - shift), s=6, alpha=0.5, color=colour, label=f"{who} (MAE {mae:.1f} {unit})")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        _readable(ax)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def spectrum_plot(path: str | Path, spectra: list[dict], title: str = "") -> Path:
    """Student vs teacher harmonic wavenumbers (cm⁻¹) of each relaxed structure, mode by mode; imaginary modes are
    plotted as negative wavenumbers and drawn as crosses. One legend entry per structure name."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    colours = {}
    for s in spectra:
        teacher, student = np.asarray(s["teacher_cm1"]), np.asarray(s["student_cm1"])
        first = s["name"] not in colours
        colour = colours.setdefault(s["name"], f"C{len(colours) % 10}")
        real = (teacher >= 0) & (student >= 0)
        ax.scatter(teacher[real], student[real], s=10, color=colour, label=s["name"] if first else None)
        if (~real).any():
            ax.scatter(teacher[~real], student[~real], s=30, marker="x", color=colour)
    every = np.concatenate([np.concatenate([s["teacher_cm1"], s["student_cm1"]]) for s in spectra])
    lo, hi = float(every.min()) - 50, float(every.max()) + 50
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    if (every < 0).any():
        ax.scatter([], [], s=30, marker="x", color="black", label="imaginary mode (shown < 0)")
    ax.set_xlabel("teacher wavenumber (cm⁻¹)")
    ax.set_ylabel("student wavenumber (cm⁻¹)")
    _readable(ax)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def md_plot(path: str | Path, md: dict, max_deviation: float = 0.5) -> Path:
    """NVT: max bond deviation (Å) vs time, × at failures; NVE: total energy per atom change (meV/atom) vs time."""
    with_nve = any(runs["nve"] for runs in md.values())
    fig = Figure(figsize=(11 if with_nve else 5.5, 4.4))
    axes = fig.subplots(1, 2 if with_nve else 1, squeeze=False)
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
    for ax in axes.ravel():
        _readable(ax)
    return _save(fig, path)
