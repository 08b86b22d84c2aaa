"""Student plugins: changes to a student that depend on the run's data, applied when the run is set up and recorded
so that a checkpoint rebuilds the same student without the data.

A plugin has ``apply(student, datamodule) -> dict``: it changes ``student`` in place and returns its own keyword
arguments, plain data, with whatever it read from the data filled in; ``DistillModule`` keeps them in the checkpoint
under the plugin's registry key (``hessdistill.registry.PLUGINS``), and ``load_student`` rebuilds the plugin from them
and applies it with no datamodule.
"""

from __future__ import annotations

import numpy as np
import torch


class TeacherEmbeddings:
    """The a2a baseline (paper §A.6): the student's element embedding becomes a learned projection of the teacher's
    element embeddings (``ForceField.use_teacher_embeddings``). z (E,) and table (E, F_t) are read from the store's
    teacher group (precompute with features=true and a teacher that has an embedding table, e.g. MACE) unless given."""

    def __init__(self, z: list[int] | None = None, table: list[list[float]] | None = None) -> None:
        self.z, self.table = z, table

    def apply(self, student, datamodule=None) -> dict:
        z, table = (self.z, self.table) if self.z is not None else \
            datamodule.store.element_embeddings(datamodule.labels.name)
        z, table = np.asarray(z, dtype=np.int64), np.asarray(table, dtype=np.float32)
        student.use_teacher_embeddings(torch.as_tensor(z), torch.as_tensor(table))
        return {"z": z.tolist(), "table": table.tolist()}
