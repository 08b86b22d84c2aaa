"""NVE drift (``evaluation.md.nve_drift``) on analytic force fields: a harmonic potential (conservative) conserves its
energy; the same potential's energy with a rotational force added (a non-conservative field, as a direct-force
student's forces are not the gradient of its energy) drifts upwards."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from hessdistill.evaluation.md import PS_PER_NS, energy_drift, nve_drift

K = 1.0  # eV/Å², harmonic spring of every atom to its start


class HarmonicWithCurl(Calculator):
    """U = ½K Σ|r − r₀|² and F = −K (r − r₀) + c ẑ × (r − r₀): conservative for c = 0; for c ≠ 0 the curl term
    does net work (m z̈ = (−K + i c) z in the xy plane has a growing mode), while U is still what is reported."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference: np.ndarray, curl: float) -> None:
        super().__init__()
        self.reference, self.curl = reference.copy(), curl

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.reference
        self.results["energy"] = 0.5 * K * float((d**2).sum())
        self.results["forces"] = -K * d + self.curl * np.cross([0.0, 0.0, 1.0], d)


def start() -> Atoms:
    return Atoms("H2O", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def test_energy_drift_is_the_fitted_slope():
    times = np.linspace(0.0, 2.0, 21)
    assert energy_drift(times, 0.3 - 0.05 * times) == pytest.approx(-0.05)
    assert PS_PER_NS == 1000.0


@pytest.mark.parametrize("timestep_fs", [0.5, 1.0])
def test_conservative_forces_conserve_energy_and_a_curl_drifts(timestep_fs):
    atoms = start()
    conservative = nve_drift(atoms, HarmonicWithCurl(atoms.positions, 0.0), steps=int(200 / timestep_fs),
                             timestep_fs=timestep_fs, record_every=5)
    rotational = nve_drift(atoms, HarmonicWithCurl(atoms.positions, 0.05), steps=int(200 / timestep_fs),
                           timestep_fs=timestep_fs, record_every=5)
    energy = np.array(conservative["total_energy_eV_per_atom"])
    assert conservative["times_ps"][-1] == pytest.approx(0.2)
    # velocity Verlet on a harmonic well: a bounded O(dt²) energy error, no drift
    assert conservative["max_energy_deviation_eV_per_atom"] < 2e-3 * energy[0]
    assert abs(conservative["drift_eV_per_atom_per_ps"]) < 1e-2 * energy[0]
    # the curl's growing mode: the energy rises, by over 10 % of its start per ps, and the fitted drift says so
    assert rotational["drift_eV_per_atom_per_ps"] > 0.1 * energy[0]
    assert rotational["drift_eV_per_atom_per_ps"] > 100 * abs(conservative["drift_eV_per_atom_per_ps"])
