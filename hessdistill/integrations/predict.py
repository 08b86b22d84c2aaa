"""Energies and forces of every frame of a structure file with a trained student, written as extxyz."""

from __future__ import annotations

from pathlib import Path

import ase.io
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Batch

from hessdistill.data.structures import Structure
from hessdistill.devices import module_device


def predict_file(student, input_path: str | Path, output_path: str | Path, batch_size: int = 64) -> int:
    """Read every frame of ``input_path`` (any ASE format), compute the student's energy (eV) and forces (eV/Å) in
    batches of ``batch_size`` frames on the student's device, and write the frames with them to ``output_path``
    (extxyz). Returns the number of frames."""
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"structure file not found: {input_path}")
    frames = ase.io.read(input_path, index=":")
    dtype, device = next(student.parameters()).dtype, module_device(student)
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        data = [Structure.from_atoms(a, source=f"{input_path}[frame {start + k}]").validate(require_labels=False)
                .to_data(dtype) for k, a in enumerate(chunk)]
        batch = Batch.from_data_list(data).to(device)
        energy, forces = student.energy_forces(batch)
        for k, atoms in enumerate(chunk):
            a, b = int(batch.ptr[k]), int(batch.ptr[k + 1])
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy[k]),
                                               forces=forces[a:b].cpu().double().numpy())
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(output_path, frames, format="extxyz")
    return len(frames)
