"""Callbacks that feed what a training step learned about the student back to the data: each atom's current force
error for the ``worst_rows`` row sampler (``hessian.row_sampling.WorstRows``)."""

from __future__ import annotations

import lightning as L


class ForceErrorFeedback(L.Callback):
    """Feeds each training batch's per-atom force errors ‖F − F̂‖ (eV/Å; reference forces against the step's student
    forces) to the datamodule's row sampler when it learns from them (``row_sampling=worst_rows``); does nothing
    otherwise. Under DDP each rank feeds its own batches."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sampler = getattr(trainer.datamodule, "row_sampler", None)
        forces = getattr(pl_module, "last_forces", None)
        if sampler is None or not sampler.learns_force_errors or forces is None:
            return
        sampler.update_force_errors(batch.idx, (batch.forces - forces).norm(dim=-1), batch.batch, batch.ptr)
