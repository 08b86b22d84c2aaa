"""The project's structure record and its conversions (ASE Atoms ⇄ Structure → PyG Data).

Units: positions Å, cell Å, energy eV, forces eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hessdistill.data.geometry import MIN_DISTANCE, closest_pair, periodic_widths
from hessdistill.data.keys import StructureData
from hessdistill.errors import HessdistillError


class InvalidStructureError(HessdistillError, ValueError):
    """A structure that cannot be used; the message names where it came from and what is wrong."""


UNIT_MEANING = {"energy_unit": "eV per energy unit of the file, e.g. 0.0433641 for kcal/mol",
                "length_unit": "Å per length unit of the file, e.g. 0.529177 for Bohr"}


def unit_factors(where, energy_unit, length_unit) -> tuple[float, float]:
    """A reader's factors from the file's units to eV and Å, as floats; InvalidStructureError naming ``where`` (the
    file) and the factor unless both are finite positive numbers."""
    factors = []
    for name, value in (("energy_unit", energy_unit), ("length_unit", length_unit)):
        try:
            factor = float(value)
        except (TypeError, ValueError):
            factor = float("nan")
        if isinstance(value, bool) or not (np.isfinite(factor) and factor > 0):
            raise InvalidStructureError(f"{where}: {name}={value!r} is not a finite positive factor "
                                        f"({UNIT_MEANING[name]})")
        factors.append(factor)
    return factors[0], factors[1]


@dataclass
class Structure:
    """One atomic configuration with optional reference labels.

    z: (N,) atomic numbers; positions: (N, 3) Å; cell: (3, 3) Å (zeros when non-periodic);
    pbc: (3,) bool; energy: eV or None; forces: (N, 3) eV/Å or None;
    info: free metadata (e.g. molecule name, seed, frame); source: where it came from, for errors.
    """

    z: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.z = np.asarray(self.z, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(3)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)

    @property
    def n_atoms(self) -> int:
        return int(self.z.shape[0])

    def validate(self, require_labels: bool = True) -> Structure:
        """Raise InvalidStructureError naming ``source`` if shapes, values, geometry (a singular or thin periodic
        cell, atoms closer than ``geometry.MIN_DISTANCE``) or labels are wrong."""
        n = self.n_atoms
        where = self.source
        if n == 0:
            raise InvalidStructureError(f"{where}: structure has no atoms")
        if self.positions.shape != (n, 3):
            raise InvalidStructureError(f"{where}: positions have shape {self.positions.shape}, expected ({n}, 3)")
        if not np.isfinite(self.positions).all():
            raise InvalidStructureError(f"{where}: positions contain NaN or inf")
        if (self.z < 1).any() or (self.z > 118).any():
            raise InvalidStructureError(f"{where}: atomic numbers out of range 1..118: {sorted(set(self.z.tolist()))}")
        self._validate_geometry()
        if require_labels:
            if self.energy is None:
                raise InvalidStructureError(f"{where}: missing reference energy")
            if self.forces is None:
                raise InvalidStructureError(f"{where}: missing reference forces")
        if self.energy is not None and not np.isfinite(self.energy):
            raise InvalidStructureError(f"{where}: energy is {self.energy}")
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                raise InvalidStructureError(f"{where}: forces have shape {self.forces.shape}, expected ({n}, 3)")
            if not np.isfinite(self.forces).all():
                raise InvalidStructureError(f"{where}: forces contain NaN or inf")
        return self

    def _validate_geometry(self) -> None:
        """A finite cell, periodic widths ≥ ``MIN_DISTANCE`` and no two atoms (or images) closer than that."""
        where = self.source
        if not np.isfinite(self.cell).all():
            raise InvalidStructureError(f"{where}: cell contains NaN or inf")
        widths = periodic_widths(self.cell, self.pbc)
        if (widths < MIN_DISTANCE).any():
            axis = int(np.flatnonzero(self.pbc)[np.argmin(widths)])
            raise InvalidStructureError(
                f"{where}: periodic cell is singular or too thin: its lattice planes along cell vector {axis + 1} "
                f"are {widths.min():.3g} Å apart (|det| = {abs(np.linalg.det(self.cell)):.3g} Å³); check the cell "
                f"(and its length_unit), or set pbc False on axes that are not periodic")
        pair = closest_pair(self.positions, self.cell, self.pbc)
        if pair is not None:
            i, j, distance = pair
            raise InvalidStructureError(
                f"{where}: atoms {i} and {j} are {distance:.3g} Å apart (< {MIN_DISTANCE} Å): a duplicated atom, or "
                f"positions not in Å (check the source's length_unit)")

    @classmethod
    def from_atoms(cls, atoms, source: str = "<atoms>", energy_unit: float = 1.0, length_unit: float = 1.0,
                   energy_key: str = "energy", forces_key: str = "forces") -> Structure:
        """Build from ASE Atoms; labels taken from an attached calculator's results or ``atoms.info``/``arrays``.

        energy_unit / length_unit: factors converting the file's units to eV and Å. energy_key / forces_key: the
        names of the labels (a calculator result, else ``atoms.info[energy_key]`` and ``atoms.arrays[forces_key]``),
        e.g. ``REF_energy`` and ``REF_forces`` in MACE-style extxyz files.
        """
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = results.get(energy_key, atoms.info.get(energy_key))
        forces = results.get(forces_key, atoms.arrays.get(forces_key))
        if energy is not None:
            energy = float(energy) * energy_unit
        if forces is not None:
            forces = np.array(forces) * energy_unit / length_unit
        info = {k: v for k, v in atoms.info.items()
                if k not in ("energy", energy_key) and isinstance(v, (str, int, float, np.integer, np.floating))}
        return cls(
            z=atoms.numbers,
            positions=atoms.positions * length_unit,
            cell=np.asarray(atoms.cell) * length_unit,
            pbc=atoms.pbc,
            energy=energy,
            forces=forces,
            info=info,
            source=source,
        )

    def to_atoms(self):
        """ASE Atoms with energy and forces attached as a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.z, positions=self.positions, cell=self.cell, pbc=self.pbc, info=dict(self.info))
        if self.energy is not None or self.forces is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        return atoms

    def to_data(self, dtype: torch.dtype = torch.get_default_dtype()) -> StructureData:
        """PyG Data: z (N,), pos (N, 3), cell (1, 3, 3), pbc (1, 3), natoms (1,), energy (1,), forces (N, 3)."""
        data = StructureData(
            z=torch.as_tensor(self.z, dtype=torch.long),
            pos=torch.as_tensor(self.positions, dtype=dtype),
            cell=torch.as_tensor(self.cell, dtype=dtype).unsqueeze(0),
            pbc=torch.as_tensor(self.pbc).unsqueeze(0),
            natoms=torch.tensor([self.n_atoms]),
        )
        if self.energy is not None:
            data.energy = torch.tensor([self.energy], dtype=dtype)
        if self.forces is not None:
            data.forces = torch.as_tensor(self.forces, dtype=dtype)
        return data
