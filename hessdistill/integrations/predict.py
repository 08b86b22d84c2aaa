"""Energies and forces of every frame of a structure file with a trained student, written as extxyz."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Batch

from hessdistill.data.sources.ase_files import read_frames
from hessdistill.data.structures import Structure
from hessdistill.devices import module_device
from hessdistill.hessian.footprint import PREDICTION_PEAK, check_fits, measure_graph_cost, neighbourhood
from hessdistill.models.elements import check_elements


def check_prediction_memory(student, structures: list[Structure], batch_size: int, warn_gib: float) -> None:
    """Refuse (``footprint.MemoryEstimateError``) a prediction whose largest frame, or batch of ``batch_size``
    frames, would need more memory than the student's device has available; warn above ``warn_gib`` GiB."""
    dtype, device = next(student.parameters()).dtype, module_device(student)
    sizes = [neighbourhood(s, student.cutoff, getattr(student, "max_neighbors", None)) for s in structures]
    largest = int(np.argmax([s.atoms + s.edges for s in sizes]))
    cost = measure_graph_cost(student.energy_forces, student, student.cutoff, int(structures[largest].z[0]), dtype,
                              device)
    size = sizes[largest]
    check_fits(cost.peak(size, PREDICTION_PEAK), device,
               f"predicting {structures[largest].source} ({size.atoms} atoms, {size.edges} neighbour pairs within "
               f"{student.cutoff} Å)", "predict it on a device with more memory, or leave it out", warn_gib)
    batches = [sum(sizes[start + 1 : start + batch_size], sizes[start]) for start in range(0, len(sizes), batch_size)]
    worst = int(np.argmax([cost.peak(b, PREDICTION_PEAK) for b in batches]))
    check_fits(cost.peak(batches[worst], PREDICTION_PEAK), device,
               f"predicting frames {worst * batch_size}–{min((worst + 1) * batch_size, len(sizes)) - 1} in one batch "
               f"({batches[worst].atoms} atoms)", f"lower batch_size (now {batch_size})", warn_gib)


def predict_file(student, input_path: str | Path, output_path: str | Path, batch_size: int = 64,
                 memory_warn_gib: float | None = 4.0, allow_unseen_elements: bool = False) -> int:
    """Read every frame of ``input_path`` (any ASE format), compute the student's energy (eV) and forces (eV/Å) in
    batches of ``batch_size`` frames on the student's device, and write the frames with them to ``output_path``
    (extxyz). Returns the number of frames. memory_warn_gib: check the estimated peak memory first
    (``check_prediction_memory``), warning above this many GiB; None: no check. A frame with an element the student
    was not trained on is refused before anything is computed, unless ``allow_unseen_elements``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer ≥ 1 (frames per student call)")
    input_path = Path(input_path)
    frames = [(k, atoms) for k, atoms in read_frames(input_path)]
    structures = [Structure.from_atoms(atoms, source=f"{input_path}[frame {k}]").validate(require_labels=False)
                  for k, atoms in frames]
    for structure in structures:
        check_elements(student, torch.as_tensor(structure.z), structure.source, allow_unseen_elements)
    if memory_warn_gib is not None:
        check_prediction_memory(student, structures, batch_size, memory_warn_gib)
    dtype, device = next(student.parameters()).dtype, module_device(student)
    for start in range(0, len(frames), batch_size):
        batch = Batch.from_data_list([s.to_data(dtype) for s in structures[start : start + batch_size]]).to(device)
        energy, forces = student.energy_forces(batch)
        for k, (_, atoms) in enumerate(frames[start : start + batch_size]):
            a, b = int(batch.ptr[k]), int(batch.ptr[k + 1])
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy[k]),
                                               forces=forces[a:b].cpu().double().numpy())
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(output_path, [atoms for _, atoms in frames], format="extxyz")
    return len(frames)
