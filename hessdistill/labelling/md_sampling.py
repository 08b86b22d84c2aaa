"""Conformer sampling by Langevin MD with a teacher's ASE calculator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def langevin_snapshots(atoms, calculator, n_snapshots: int, seed: int, temperature_K: float = 500.0,
                       timestep_fs: float = 0.5, friction_per_fs: float = 0.01, n_equilibrate: int = 500,
                       interval: int = 40, stop: Callable | None = None) -> list:
    """Snapshots (copies of ``atoms``) every ``interval`` steps after ``n_equilibrate`` steps of NVT Langevin.

    Velocities start Maxwell-Boltzmann at ``temperature_K`` from ``seed``. ``fixcm=False``: with ASE's default
    centre-of-mass fixing, molecules this small heat far above the target temperature. stop: a predicate on the
    atoms; the run ends at the first snapshot for which it holds (that snapshot dropped), e.g. a broken molecule.
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    dyn.run(n_equilibrate)
    snapshots = []
    for _ in range(n_snapshots):
        dyn.run(interval)
        if stop is not None and stop(atoms):
            break
        snap = atoms.copy()
        snap.calc = None
        snapshots.append(snap)
    return snapshots
