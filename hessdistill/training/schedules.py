"""Learning-rate schedules beyond torch's own, as factories of torch schedulers (``scheduler`` configs with
``_partial_: true`` receive the optimizer).

``warmup_cosine``: a linear warmup, then half a cosine that reaches its floor at the last epoch of the run's budget.
It steps once per epoch (Lightning's default interval), like ReduceLROnPlateau, and its state (the epoch count and
base learning rates) is a torch ``LambdaLR``'s, which checkpoints save and a resumed run restores, so a resumed run
follows the schedule an uninterrupted one would.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(epoch: int, epochs: int, warmup_epochs: int, floor: float) -> float:
    """The learning rate of epoch ``epoch`` (0-based) as a fraction of the base rate: (e + 1)/(W + 1) during the
    W warmup epochs, then floor + (1 − floor)·½(1 + cos(π t)) with t = (e − W)/(epochs − 1 − W), so 1 at epoch W and
    ``floor`` at the last epoch, epochs − 1 (and after it)."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    t = min(1.0, (epoch - warmup_epochs) / (epochs - 1 - warmup_epochs))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(optimizer: Optimizer, epochs: int, warmup_epochs: int = 0, min_lr: float = 0.0) -> LambdaLR:
    """Linear warmup over ``warmup_epochs``, then cosine decay to ``min_lr`` (absolute, as ReduceLROnPlateau's) at
    the last of ``epochs`` epochs (the run's trainer.max_epochs); stepped once per epoch."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 0 <= warmup_epochs < epochs - 1:
        raise ValueError(f"scheduler=cosine needs epochs (trainer.max_epochs, got {epochs!r}) > warmup_epochs + 1 "
                         f"(got {warmup_epochs!r}): the cosine decays over the epochs after the warmup")
    floors = [min_lr / group["lr"] for group in optimizer.param_groups]
    if any(not 0.0 <= f <= 1.0 for f in floors):
        raise ValueError(f"scheduler=cosine: min_lr={min_lr} must lie between 0 and the optimizer's lr "
                         f"{[group['lr'] for group in optimizer.param_groups]}")
    return LambdaLR(optimizer, [lambda e, f=f: warmup_cosine_factor(e, epochs, warmup_epochs, f) for f in floors])
