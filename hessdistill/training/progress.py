"""What a user sees while a student trains: a progress bar with the validation errors in their units, and a log line
for every change of the learning rate that a plateau scheduler makes (λ_KD halvings: ``callbacks.HalveKDWeight``)."""

from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch.optim.lr_scheduler import ReduceLROnPlateau

log = logging.getLogger(__name__)

# (logged metric, label, format): the last training loss and the last validation's errors (hessdistill.metrics.UNITS)
SHOWN = (("train/loss", "loss", "{:.4g}"),
         ("val/force_mae", "val force MAE", "{:.1f} meV/Å"),
         ("val/energy_mae", "val energy MAE", "{:.2f} meV/atom"))


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, showing the epoch, the training loss and the last validation's force MAE (meV/Å) and
    energy MAE (meV/atom).

    In a terminal (``terminal``; None: whether stdout is one): the bar, redrawn every ``refresh_rate`` steps. Otherwise
    (a log file, CI): no bars but one line per epoch, written when its validation is done, e.g.
    ``epoch 3/150: loss 0.812, val force MAE 74.4 meV/Å, val energy MAE 3.21 meV/atom (2.1 s)``. YAML::

        callbacks:
          progress: {_target_: hessdistill.training.progress.ProgressBar, refresh_rate: 10}
    """

    def __init__(self, refresh_rate: int = 10, terminal: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self._epoch_started = time.monotonic()

    @property
    def is_enabled(self) -> bool:  # the tqdm bars: a terminal's only
        return self.terminal and super().is_enabled

    def get_metrics(self, trainer, pl_module) -> dict:
        """The bar's items: the ``SHOWN`` metrics with their units and anything else logged with ``prog_bar=True``
        (not Lightning's logger version number)."""
        metrics = trainer.callback_metrics
        shown = {label: fmt.format(float(metrics[key])) for key, label, fmt in SHOWN if key in metrics}
        others = {k: v for k, v in trainer.progress_bar_metrics.items() if k not in {key for key, *_ in SHOWN}}
        return {**shown, **others}

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.terminal or not self._enabled or self.refresh_rate == 0 or not trainer.is_global_zero:
            return
        items = ", ".join(f"{k} {v}" for k, v in self.get_metrics(trainer, pl_module).items())
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {trainer.current_epoch + 1}{total}: {items} ({time.monotonic() - self._epoch_started:.1f} s)",
              flush=True)


class LogLearningRateReductions(Callback):
    """A log line each time a ``ReduceLROnPlateau`` scheduler lowers the learning rate (its validation metric stopped
    improving). Schedules that change the rate every step (cosine) are not logged here: their curve is the logger's
    ``lr-<optimizer>`` column (``LearningRateMonitor``)."""

    def __init__(self) -> None:
        self._rates: list[list[float]] | None = None

    @staticmethod
    def _plateau_rates(trainer) -> list[tuple]:
        return [(config, [group["lr"] for group in config.scheduler.optimizer.param_groups])
                for config in trainer.lr_scheduler_configs if isinstance(config.scheduler, ReduceLROnPlateau)]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # a plateau scheduler steps after the epoch's validation, once every callback's epoch end has run
        current = self._plateau_rates(trainer)
        rates = [lrs for _, lrs in current]
        if self._rates is not None and trainer.is_global_zero:
            for (config, after), before in zip(current, self._rates):
                if after != before:
                    log.info("after epoch %d: learning rate %.3g → %.3g (ReduceLROnPlateau: %s did not improve for %d "
                             "epochs)", trainer.current_epoch, before[0], after[0], config.monitor,
                             config.scheduler.patience)
        self._rates = rates
