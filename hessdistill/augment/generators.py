"""Configurations generated from one training structure (the parent), to be labelled by the teacher: random
rattles, thermal normal-mode displacements along the teacher's Hessian eigenvectors, and teacher Langevin MD.

A generator's ``configurations(parent, hessian, calculator, rng)`` returns positions (C, N, 3) Å of the parent's
atoms; ``hessian()`` gives the teacher's (3N, 3N) Hessian at the parent (eV/Å²) and ``calculator`` is the teacher's
ASE calculator, each used only by the generator that needs it. ``origin`` is the flag its structures carry
(``data.keys.ORIGINS``) and ``teacher_steps`` the teacher force calls one parent costs beyond labelling the
configurations (MD steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hessdistill.augment.normal_modes import internal_modes, thermal_displacements
from hessdistill.data.keys import NORMAL_MODE, RATTLE, TEACHER_MD
from hessdistill.data.structures import Structure
from hessdistill.labelling.md_sampling import langevin_snapshots


class Rattle:
    """``copies`` configurations with independent Gaussian noise of ``stdev`` Å on every coordinate."""

    origin, teacher_steps = RATTLE, 0

    def __init__(self, stdev: float = 0.04, copies: int = 3) -> None:
        self.stdev, self.copies = float(stdev), int(copies)

    def configurations(self, parent: Structure, hessian: Callable[[], np.ndarray], calculator,
                       rng: np.random.Generator) -> np.ndarray:
        return parent.positions + rng.normal(0.0, self.stdev, (self.copies, parent.n_atoms, 3))


class NormalModes:
    """``copies`` thermal displacements at ``temperature_K`` along the teacher's normal modes at the parent
    (``augment.normal_modes``): amplitude of mode k ~ N(0, k_B·T/λ_k), modes with λ ≤ ``min_eigenvalue`` eV/Å² and
    the rigid motions skipped."""

    origin, teacher_steps = NORMAL_MODE, 0

    def __init__(self, temperature_K: float = 300.0, copies: int = 3, min_eigenvalue: float = 0.5) -> None:
        self.temperature_K, self.copies, self.min_eigenvalue = float(temperature_K), int(copies), float(min_eigenvalue)

    def configurations(self, parent, hessian, calculator, rng) -> np.ndarray:
        eigenvalues, modes = internal_modes(hessian(), parent.positions, self.min_eigenvalue)
        return parent.positions + thermal_displacements(eigenvalues, modes, self.temperature_K, self.copies, rng)


class TeacherMD:
    """Teacher Langevin MD from the parent (``labelling.md_sampling.langevin_snapshots``, fixcm=False) at each of
    ``temperatures_K``: ``snapshots`` configurations every ``interval`` steps after ``equilibrate`` steps."""

    origin = TEACHER_MD

    def __init__(self, temperatures_K: Sequence[float] = (300.0,), snapshots: int = 3, interval: int = 20,
                 equilibrate: int = 20, timestep_fs: float = 0.5, friction_per_fs: float = 0.01) -> None:
        self.temperatures_K = [float(t) for t in temperatures_K]
        self.snapshots, self.interval, self.equilibrate = int(snapshots), int(interval), int(equilibrate)
        self.timestep_fs, self.friction_per_fs = float(timestep_fs), float(friction_per_fs)
        self.teacher_steps = len(self.temperatures_K) * (self.equilibrate + self.snapshots * self.interval)

    def configurations(self, parent, hessian, calculator, rng) -> np.ndarray:
        out = []
        for temperature in self.temperatures_K:
            snaps = langevin_snapshots(parent.to_atoms(), calculator, self.snapshots, int(rng.integers(2**31)),
                                       temperature, self.timestep_fs, self.friction_per_fs, self.equilibrate,
                                       self.interval)
            out.extend(s.positions for s in snaps)
        return np.stack(out)
