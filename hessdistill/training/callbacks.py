"""Callbacks that change training as it goes (kept out of the module's training step)."""

from __future__ import annotations

import lightning as L

from hessdistill.training.module import LossWeights


class HalveKDWeight(L.Callback):
    """Halve λ_KD once the student's validation metric beats the frozen teacher's (paper §B.5).

    The condition is ``student <= (1 + margin) · teacher`` on ``val/<metric>`` vs ``val/teacher_<metric>``;
    the paper compares L_EF (``metric: loss_ef``, margin 0); the authors' code halved once the force MAE came
    within 5 % (``metric: force_mae``, ``margin: 0.05``). At most ``max_halvings`` halvings. YAML::

        callbacks:
          halve_kd: {_target_: hessdistill.training.callbacks.HalveKDWeight, metric: loss_ef, margin: 0.0}

    Stateful: a resumed run continues with the same λ_KD.
    """

    def __init__(self, metric: str = "loss_ef", margin: float = 0.0, max_halvings: int = 1) -> None:
        self.metric, self.margin, self.max_halvings = metric, margin, max_halvings
        self.halvings = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.halvings >= self.max_halvings or pl_module.weights.hessian == 0:
            return
        student = trainer.callback_metrics.get(f"val/{self.metric}")
        teacher = trainer.callback_metrics.get(f"val/teacher_{self.metric}")
        if student is None or teacher is None:
            return
        if float(student) <= (1.0 + self.margin) * float(teacher):
            pl_module.weights.hessian /= 2.0
            self.halvings += 1

    def on_fit_start(self, trainer, pl_module) -> None:
        configured = LossWeights(**pl_module.hparams.weights).hessian
        pl_module.weights.hessian = configured / 2**self.halvings

    def state_dict(self) -> dict:
        return {"halvings": self.halvings}

    def load_state_dict(self, state_dict: dict) -> None:
        self.halvings = state_dict["halvings"]
