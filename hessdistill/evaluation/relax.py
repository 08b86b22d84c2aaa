"""Geometry optimisation with FIRE (paper §B.8) and the harmonic spectra of relaxed structures."""

from __future__ import annotations

import numpy as np
from ase.optimize import FIRE
from tqdm import tqdm

from hessdistill.evaluation.vibrations import harmonic_frequencies
from hessdistill.integrations.ase_calculator import TorchCalculator, model_hessian


def relax(atoms, model, fmax: float = 0.05, steps: int = 500):
    """FIRE until every atom's force is below ``fmax`` eV/Å (or ``steps``). Returns (relaxed copy, converged, steps)."""
    atoms = atoms.copy()
    atoms.calc = TorchCalculator(model)
    opt = FIRE(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return atoms, converged, opt.get_number_of_steps()


def judge(atoms, calculator) -> tuple[float, float]:
    """Energy (eV) and max per-atom force norm (eV/Å) of ``atoms`` according to an ASE calculator."""
    probe = atoms.copy()
    probe.calc = calculator
    return float(probe.get_potential_energy()), float(np.linalg.norm(probe.get_forces(), axis=1).max())


def relaxation_report(structures, student, teacher, fmax: float = 0.05, steps: int = 500,
                      reference=None) -> list[dict]:
    """Relax each structure with the student and with the teacher; judge both results with ``reference`` (an ASE
    calculator, e.g. DFT as in the paper) or, when None, with the teacher. Energies in eV, forces in eV/Å."""
    referee = reference if reference is not None else TorchCalculator(teacher)
    rows = []
    for k, s in enumerate(tqdm(structures, desc="FIRE relaxations", unit="structure")):
        start = s.to_atoms()
        start.calc = None
        row = {"structure": k, "name": str(s.info.get("molecule", s.source))}
        for who, model in (("student", student), ("teacher", teacher)):
            relaxed, converged, n = relax(start, model, fmax, steps)
            energy, force = judge(relaxed, referee)
            row.update({f"{who}_converged": converged, f"{who}_steps": n, f"{who}_judged_energy_eV": energy,
                        f"{who}_judged_max_force_eV_per_A": force})
        rows.append(row)
    return rows


def spectra_report(structures, student, teacher, fmax: float = 1e-3, steps: int = 2000) -> list[dict]:
    """Harmonic wavenumbers (cm⁻¹) of each model at its own tightly relaxed geometry, mode by mode (both sorted)
    and their mean absolute difference."""
    out = []
    for s in tqdm(structures, desc="harmonic spectra", unit="structure"):
        start = s.to_atoms()
        start.calc = None
        freqs = {}
        for who, model in (("student", student), ("teacher", teacher)):
            relaxed, _, _ = relax(start, model, fmax, steps)
            freqs[who] = harmonic_frequencies(model_hessian(model, relaxed), relaxed.get_masses())
        out.append({"name": str(s.info.get("molecule", s.source)), "student_cm1": freqs["student"],
                    "teacher_cm1": freqs["teacher"],
                    "mae_cm1": float(np.abs(freqs["student"] - freqs["teacher"]).mean())})
    return out
