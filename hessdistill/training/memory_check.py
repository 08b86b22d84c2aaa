"""Before training: the estimated peak memory of a training step and of a validation step on the largest structures
of their splits (``hessian.footprint``), refused beyond the training device's available memory with the settings
that need less, warned about above a threshold."""

from __future__ import annotations

import numpy as np
import torch

from hessdistill.hessian.footprint import TRAINING_PEAK, Neighbourhood, check_fits, measure_graph_cost, neighbourhood
from hessdistill.hessian.student_rows import resolve_student_strategy
from hessdistill.training.predictions import predict


def with_rows(rows: int):
    """A probe batch's preparation: the first ``rows`` rows of each structure sampled (none when 0)."""
    def prepare(batch):
        if rows:  # at most the probe's 3N rows
            count = min(rows, 3 * int(batch.ptr[1] - batch.ptr[0]))
            batch.sampled_rows = torch.arange(count, device=batch.pos.device).repeat(batch.num_graphs, 1)
        return batch
    return prepare


def largest(datamodule, split: str, count: int) -> tuple[Neighbourhood, int]:
    """The summed neighbourhood of the ``count`` structures of ``split`` with the most atoms (a batch at its
    largest), and the store index of the largest one."""
    indices = datamodule.splits[split]
    top = indices[np.argsort(datamodule.store.n_atoms()[indices])[::-1][:count]]
    student_graph = datamodule.cutoff, datamodule.max_neighbors
    sizes = [neighbourhood(datamodule.store.structure(int(i)), *student_graph) for i in top]
    return sum(sizes[1:], sizes[0]), int(top[0])


def check_training_memory(module, datamodule, device: torch.device, warn_gib: float) -> None:
    """Refuse (``footprint.MemoryEstimateError``) or warn about a training step (``subset.batch_size`` structures,
    ``rows`` sampled Hessian rows each, by the run's row strategy) or a validation step (``subset.eval_batch_size``
    structures, ``datamodule.eval_rows`` rows) whose estimated peak exceeds ``device``'s available memory or
    ``warn_gib`` GiB. The probes run where the student is (before fit: CPU) with the strategy of ``device``."""
    student = module.student
    dtype, where = next(student.parameters()).dtype, next(student.parameters()).device
    strategy = resolve_student_strategy(module.row_strategy, torch.device(device), student.force_mode)
    steps = {
        "train": (datamodule.batch_size, module.loss.rows, module.loss.predictions, True,
                  f"lower subset.batch_size (now {datamodule.batch_size}) or rows (now {module.loss.rows})"),
        "val": (datamodule.eval_batch_size, datamodule.eval_rows, frozenset({"force_jacobian_rows"}), False,
                f"lower subset.eval_batch_size (now {datamodule.eval_batch_size}) or datamodule.eval_rows (now "
                f"{datamodule.eval_rows})"),
    }
    for split, (count, rows, wanted, training, change) in steps.items():
        size, first = largest(datamodule, split, count)
        structure = datamodule.store.structure(first)
        cost = measure_graph_cost(lambda b: predict(student, b, wanted, create_graph=training, strategy=strategy),
                                  student, student.cutoff, int(structure.z[0]), dtype, where, with_rows(rows))
        check_fits(cost.peak(size, TRAINING_PEAK), device,
                   f"a {'training' if training else 'validation'} step on the {count} largest structures of the "
                   f"{split} split ({size.atoms} atoms, {size.edges} neighbour pairs within {student.cutoff} Å; the "
                   f"largest {structure.source})", change, warn_gib)
