"""Callbacks that change training as it goes (kept out of the module's training step)."""

from __future__ import annotations

import logging

import lightning as L
import torch

from hessdistill.losses import per_structure_sum

log = logging.getLogger(__name__)


class HalveKDWeight(L.Callback):
    """Halve the weight of loss term ``term`` (λ_KD) once the student's validation metric beats the frozen teacher's
    (paper §B.5).

    The condition is ``student <= (1 + margin) · teacher`` on ``val/<metric>`` vs ``val/teacher_<metric>``;
    the paper compares L_EF (``metric: loss_ef``, margin 0); the authors' code halved once the force MAE came
    within 5 % (``metric: force_mae``, ``margin: 0.05``). At most ``max_halvings`` halvings. YAML::

        callbacks:
          halve_kd: {_target_: hessdistill.training.callbacks.HalveKDWeight, metric: loss_ef, margin: 0.0}

    Stateful: a resumed run continues with the same λ_KD. A run without the term, or with weight 0, is left alone.
    """

    def __init__(self, metric: str = "loss_ef", margin: float = 0.0, max_halvings: int = 1,
                 term: str = "hessian") -> None:
        self.metric, self.margin, self.max_halvings, self.term = metric, margin, max_halvings, term
        self.halvings = 0

    def _applies(self, pl_module) -> bool:
        return self.term in pl_module.loss.terms and pl_module.loss.initial_weights[self.term] > 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.halvings >= self.max_halvings or not self._applies(pl_module):
            return
        student = trainer.callback_metrics.get(f"val/{self.metric}")
        teacher = trainer.callback_metrics.get(f"val/teacher_{self.metric}")
        if student is None or teacher is None:
            return
        if float(student) <= (1.0 + self.margin) * float(teacher):
            before = pl_module.loss.weight(self.term)
            pl_module.loss.set_weight(self.term, before / 2.0)
            self.halvings += 1
            if trainer.is_global_zero:
                log.info("after epoch %d: the student's val/%s %.4g ≤ %sthe teacher's %.4g: λ of %s halved %.4g → %.4g "
                         "(halving %d of at most %d)", trainer.current_epoch + 1, self.metric, float(student),
                         f"(1 + {self.margin:g}) × " if self.margin else "", float(teacher), self.term, before,
                         before / 2.0, self.halvings, self.max_halvings)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._applies(pl_module):
            pl_module.loss.set_weight(self.term, pl_module.loss.initial_weights[self.term] / 2**self.halvings)

    def state_dict(self) -> dict:
        return {"halvings": self.halvings}

    def load_state_dict(self, state_dict: dict) -> None:
        self.halvings = state_dict["halvings"]


class RowResidualFeedback(L.Callback):
    """Feeds each training batch's Hessian-row residual norms ‖H_j + ∂F̂_j/∂r‖ (eV/Å², per structure and sampled row)
    to the datamodule's row sampler when it learns from them (``row_sampling=residual``, ``hessian.row_sampling``);
    does nothing otherwise."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sampler = getattr(trainer.datamodule, "row_sampler", None)
        if sampler is None or not sampler.learns or pl_module.last_rows is None or not hasattr(batch, "teacher_rows"):
            return
        squared = ((batch.teacher_rows + pl_module.last_rows) ** 2).sum(-1)  # (s, Ntot)
        norms = torch.stack([per_structure_sum(lane, batch.batch, batch.num_graphs) for lane in squared]).sqrt()
        sampler.update(batch.idx, batch.sampled_rows, norms.T)
