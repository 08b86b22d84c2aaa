"""MD stability (NVT Langevin, paper §B.7) and energy conservation (NVE) of a model.

Stability: a run fails at the first step where any bond's length deviates by more than ``max_deviation`` (0.5 Å,
the paper's criterion after Fu et al. 2022) from its equilibrium length. Bonds are the atom pairs closer than
``bond_scale`` × the sum of covalent radii in the starting structure; equilibrium lengths are their mean lengths
over the training structures of the same molecule (``info["molecule"]``), or the starting lengths otherwise.
NVE drift is the slope of a straight-line fit of the total energy per atom against time, eV/atom/ps (× 1000 for the
paper's eV/atom/ns). A conservative model (F = −∇U) drifts only by the integrator's error; a direct-force model's
forces are not the gradient of its energy, so the energy it reports is not conserved. ``model`` is a force field
(wrapped in ``TorchCalculator``) or any ASE calculator.
"""

from __future__ import annotations

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

from hessdistill.integrations.ase_calculator import TorchCalculator

PS_PER_NS = 1000.0


def as_calculator(model) -> Calculator:
    """An ASE calculator as it is; a force field (``models.base.ForceField``) through ``TorchCalculator``."""
    return model if isinstance(model, Calculator) else TorchCalculator(model)


def bonds_of(atoms, bond_scale: float = 1.2) -> np.ndarray:
    """(K, 2) atom pairs closer than bond_scale × (r_cov,i + r_cov,j) (non-periodic distances)."""
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < bond_scale * (r[:, None] + r[None, :]), k=1))
    return np.stack([i, j], axis=1)


def bond_lengths(positions: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    return np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=-1)


def max_bond_deviation(positions: np.ndarray, bonds: np.ndarray, equilibrium: np.ndarray) -> float:
    """max_b |d_b − d_b,eq| in Å (0 when there are no bonds)."""
    return float(np.abs(bond_lengths(positions, bonds) - equilibrium).max()) if len(bonds) else 0.0


def equilibrium_lengths(start, bonds: np.ndarray, training: list | None = None) -> np.ndarray:
    """Mean length of each bond over the training structures of the same molecule (same atoms in the same order),
    or the starting geometry's lengths when there are none."""
    same = [s for s in (training or []) if np.array_equal(s.numbers, start.numbers)
            and s.info.get("molecule") == start.info.get("molecule")]
    if not same:
        return bond_lengths(start.positions, bonds)
    return np.mean([bond_lengths(s.positions, bonds) for s in same], axis=0)


def nvt_stability(atoms, model, equilibrium: np.ndarray | None = None, bonds: np.ndarray | None = None,
                  steps: int = 1000, temperature_K: float = 300.0, timestep_fs: float = 1.0,
                  friction_per_fs: float = 0.01, max_deviation: float = 0.5, seed: int = 0,
                  record_every: int = 10) -> dict:
    """Langevin NVT from ``atoms`` until ``steps`` or the first bond deviation > max_deviation (Å).

    Returns time_to_failure_ps (None if stable), simulated_ps, and the trace (times ps, max deviation Å)."""
    atoms = atoms.copy()
    atoms.calc = as_calculator(model)
    bonds = bonds_of(atoms) if bonds is None else bonds
    equilibrium = bond_lengths(atoms.positions, bonds) if equilibrium is None else equilibrium
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction_per_fs / units.fs,
                   fixcm=False, rng=rng)
    times, deviations, failed = [], [], None
    for step in range(1, steps + 1):
        dyn.run(1)
        deviation = max_bond_deviation(atoms.positions, bonds, equilibrium)
        if step % record_every == 0 or deviation > max_deviation:
            times.append(step * timestep_fs * 1e-3)
            deviations.append(deviation)
        if deviation > max_deviation:
            failed = step * timestep_fs * 1e-3
            break
    return {"time_to_failure_ps": failed, "simulated_ps": step * timestep_fs * 1e-3, "times_ps": times,
            "max_bond_deviation_A": deviations}


def energy_drift(times_ps: np.ndarray, energy_per_atom: np.ndarray) -> float:
    """Slope of the least-squares line through total energy per atom vs time: eV/atom/ps."""
    return float(np.polyfit(np.asarray(times_ps, dtype=np.float64),
                            np.asarray(energy_per_atom, dtype=np.float64), 1)[0])


def nve_drift(atoms, model, steps: int = 1000, temperature_K: float = 300.0, timestep_fs: float = 1.0,
              seed: int = 0, record_every: int = 10) -> dict:
    """Velocity Verlet from Maxwell–Boltzmann velocities; returns drift_eV_per_atom_per_ps, the largest deviation of
    the total energy from its start (max_energy_deviation_eV_per_atom) and the energy trace (eV/atom, every
    ``record_every`` steps)."""
    atoms = atoms.copy()
    atoms.calc = as_calculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    n = len(atoms)
    times, energies = [0.0], [atoms.get_total_energy() / n]
    for step in range(record_every, steps + 1, record_every):
        dyn.run(record_every)
        times.append(step * timestep_fs * 1e-3)
        energies.append(atoms.get_total_energy() / n)
    return {"drift_eV_per_atom_per_ps": energy_drift(np.array(times), np.array(energies)),
            "max_energy_deviation_eV_per_atom": float(np.abs(np.array(energies) - energies[0]).max()),
            "times_ps": times, "total_energy_eV_per_atom": energies}


def md_report(structures, models: dict, training: list, steps: int, nve_steps: int, temperature_K: float = 300.0,
              timestep_fs: float = 1.0, friction_per_fs: float = 0.01, max_deviation: float = 0.5,
              seed: int = 0) -> dict:
    """NVT stability and NVE drift of every model (name → model) from each of ``structures`` (ASE Atoms)."""
    out = {name: {"nvt": [], "nve": []} for name in models}
    for k, atoms in enumerate(tqdm(structures, desc="MD (NVT, NVE)", unit="structure")):
        bonds = bonds_of(atoms)
        equilibrium = equilibrium_lengths(atoms, bonds, training)
        for name, model in models.items():
            out[name]["nvt"].append(nvt_stability(atoms, model, equilibrium, bonds, steps, temperature_K, timestep_fs,
                                                  friction_per_fs, max_deviation, seed + k))
            if nve_steps:
                out[name]["nve"].append(nve_drift(atoms, model, nve_steps, temperature_K, timestep_fs, seed + k))
    return out
