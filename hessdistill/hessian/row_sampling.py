"""Which Hessian rows a training item draws, and with what weight (``row_sampling``).

``uniform`` (the default) is the one row sampler ``hessian.rows.sample_rows``: s distinct rows, each equally likely,
no weights. The importance samplers draw s rows with replacement with probability p_j and weight each drawn row's
KD term by w_j = 1/(n·p_j) (n: the rows available), so that for any fixed residuals r_j

    E[(1/s) Σ_k w_{j_k} ‖r_{j_k}‖²] = Σ_j p_j ‖r_j‖² / (n·p_j) = (1/n) Σ_j ‖r_j‖²,

the expectation of the uniform term: the loss is unbiased, only its variance changes. p mixes the sampler's scores
q_j with a uniform floor, p_j = (1 − floor)·q_j/Σq + floor/n, so every row keeps p_j ≥ floor/n and w_j ≤ 1/floor.

- ``teacher_norm``: q_j = ‖H_j‖, the teacher row's norm (stored labels only).
- ``residual``: q_j = ‖H_j + ∂F̂_j/∂r‖, the student's residual when row j of this structure was last drawn, kept
  in a buffer over every (structure, row) of the run (``update``, fed by ``training.callbacks.RowResidualFeedback``);
  rows not seen yet score as the structure's largest seen residual (all rows alike before any is seen). The buffer
  sits in shared memory, so DataLoader workers see the training process's updates; it is saved with the datamodule's
  state in checkpoints. Under DDP each rank learns from its own batches.

``worst_rows`` (the authors' later MLFF-distill code) is not an importance sampler: it takes the 3 rows of the
atoms with the largest current force error ‖F − F̂‖ (a per-atom buffer like the residual one, fed by
``training.feedback.ForceErrorFeedback``), each of the s slots replaced by a uniformly drawn row with probability
``floor`` so that every row can be drawn. It is greedy and biased on purpose — the KD term concentrates on the atoms
the student gets most wrong rather than estimating the uniform term — and its rows carry no weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from hessdistill.hessian.rows import sample_rows

ROW_SAMPLINGS = ("uniform", "teacher_norm", "residual", "worst_rows")
Draw = tuple[Tensor, Tensor | None]  # rows (s,) int64, and their weights (s,) or None (uniform)


class UniformRows:
    """s distinct rows, uniformly (``sample_rows``): no weights."""

    learns = False  # fed the rows' residual norms (training.callbacks.RowResidualFeedback)
    learns_force_errors = False  # fed each atom's force error (training.feedback.ForceErrorFeedback)

    def draw(self, key: int, available: Tensor, s: int, generator: torch.Generator, where: str,
             teacher_norms: Callable[[], Tensor]) -> Draw:
        """Rows of structure ``key`` (its id in the run) among ``available`` (1-D row indices); ``teacher_norms``
        gives the teacher's row norms of ``available`` (n,) eV/Å² when a sampler needs them."""
        return sample_rows(available, s, generator, where), None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""


def importance_draw(scores: Tensor, floor: float, available: Tensor, s: int, generator: torch.Generator,
                    where: str) -> Draw:
    """s rows of ``available`` drawn with replacement with p = (1 − floor)·scores/Σscores + floor/n (uniform when
    every score is 0) and their weights 1/(n·p). scores: (n,) ≥ 0."""
    if s < 1:
        raise ValueError(f"{where}: need at least one Hessian row per structure, got s={s}")
    n = len(available)
    scores = scores.double()
    total = float(scores.sum())
    q = scores / total if total > 0 else torch.full_like(scores, 1.0 / n)
    p = (1.0 - floor) * q + floor / n
    chosen = torch.multinomial(p, s, replacement=True, generator=generator)
    return available[chosen], 1.0 / (n * p[chosen])


class TeacherNormRows(UniformRows):
    """p_j ∝ ‖H_j‖ (the teacher's row norm), mixed with ``floor`` uniform. Norms are cached per structure."""

    def __init__(self, floor: float) -> None:
        self.floor, self._norms = _check_floor(floor), {}

    def draw(self, key, available, s, generator, where, teacher_norms) -> Draw:
        if key not in self._norms:
            self._norms[key] = teacher_norms()
        return importance_draw(self._norms[key], self.floor, available, s, generator, where)


class ResidualRows(UniformRows):
    """p_j ∝ the student's last-seen residual norm of row j, mixed with ``floor`` uniform.

    widths: (K,) rows 3N_k of every structure k of the run (its id, ``data.keys.STRUCTURE_ID``); the buffer holds
    Σ_k 3N_k float32 values (NaN: not seen yet)."""

    learns = True

    def __init__(self, floor: float, widths: np.ndarray) -> None:
        self.floor = _check_floor(floor)
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.buffer = torch.full((int(self.offsets[-1]),), float("nan")).share_memory_()

    def scores(self, key: int, available: Tensor) -> Tensor:
        """Last-seen residuals of ``available`` rows of structure ``key``; unseen rows take the largest seen one."""
        seen = self.buffer[int(self.offsets[key]) + available]
        known = ~torch.isnan(seen)
        if not known.any():
            return torch.ones_like(seen)
        return torch.where(known, seen, seen[known].max())

    def draw(self, key, available, s, generator, where, teacher_norms) -> Draw:
        return importance_draw(self.scores(key, available), self.floor, available, s, generator, where)

    def update(self, keys: Tensor, rows: Tensor, residuals: Tensor) -> None:
        """Record residual norms (B, s) of rows (B, s) of structures ``keys`` (B,)."""
        flat = torch.as_tensor(self.offsets)[keys.cpu()][:, None] + rows.cpu()
        self.buffer[flat.reshape(-1)] = residuals.detach().float().cpu().reshape(-1)

    def state_dict(self) -> dict:
        return {"residual_rows": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        _restore(self.buffer, state["residual_rows"], "row-residual buffer", "rows")


class WorstRows(UniformRows):
    """The rows of the atoms with the largest last-seen force error, greedily, with a random share (no weights).

    Greedy order of a structure's ``available`` rows: by their atom's error, largest first, ties (an atom's 3 rows,
    and a structure not seen yet, whose rows are then all tied) in random order. Each of the s slots is, with
    probability ``floor``, a row drawn uniformly from those the greedy slots left; the others take the greedy order's
    first rows. Rows are distinct. widths: (K,) rows 3N_k of every structure k of the run; the buffer holds Σ_k N_k
    float32 force errors ‖F − F̂‖ in eV/Å (NaN: not seen yet).
    """

    learns_force_errors = True

    def __init__(self, floor: float, widths: np.ndarray) -> None:
        self.floor = _check_floor(floor)
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(widths) // 3)]).astype(np.int64)
        self.buffer = torch.full((int(self.offsets[-1]),), float("nan")).share_memory_()

    def draw(self, key, available, s, generator, where, teacher_norms) -> Draw:
        if s < 1 or len(available) < s:
            return sample_rows(available, s, generator, where), None  # its one-line error
        errors = self.buffer[int(self.offsets[key]) + available // 3].double().nan_to_num(-1.0)  # unseen: last
        shuffled = torch.randperm(len(available), generator=generator)
        greedy = shuffled[torch.argsort(errors[shuffled], descending=True, stable=True)]
        n_random = int((torch.rand(s, generator=generator, dtype=torch.float64) < self.floor).sum())
        rest = greedy[s - n_random:]
        chosen = torch.cat([greedy[: s - n_random], rest[torch.randperm(len(rest), generator=generator)[:n_random]]])
        return available[chosen], None

    def update_force_errors(self, keys: Tensor, errors: Tensor, batch: Tensor, ptr: Tensor) -> None:
        """Record the force errors (Ntot,) eV/Å of every atom of a batch of structures ``keys`` (B,); batch (Ntot,)
        and ptr (B+1,) as in PyG."""
        batch, ptr = batch.cpu(), ptr.cpu()
        flat = torch.as_tensor(self.offsets)[keys.cpu()][batch] + torch.arange(len(batch)) - ptr[batch]
        self.buffer[flat] = errors.detach().float().cpu()

    def state_dict(self) -> dict:
        return {"atom_force_errors": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        _restore(self.buffer, state["atom_force_errors"], "force-error buffer", "atoms")


def _restore(buffer: Tensor, saved: Tensor, what: str, unit: str) -> None:
    """Restore a sampler's buffer; one saved with fewer structures (a run whose training set has grown since, e.g. by
    on-policy rounds, which add structures after the others) fills the first ones."""
    if len(saved) > len(buffer):
        raise ValueError(f"the checkpoint's {what} covers {len(saved)} {unit}, this run's structures only "
                         f"{len(buffer)}: it was saved for other data")
    buffer[: len(saved)] = saved


def _check_floor(floor: float) -> float:
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"row_floor must be in (0, 1] so that every row can be drawn, got {floor}")
    return float(floor)


UNIFORM = UniformRows()


def make_row_sampler(name: str, floor: float, widths: Callable[[], np.ndarray]) -> UniformRows:
    """The sampler ``name`` (``ROW_SAMPLINGS``); widths: the rows 3N_k of every structure of the run, on demand."""
    if name == "uniform":
        return UNIFORM
    if name == "teacher_norm":
        return TeacherNormRows(floor)
    if name == "residual":
        return ResidualRows(floor, widths())
    if name == "worst_rows":
        return WorstRows(floor, widths())
    raise ValueError(f"unknown row_sampling {name!r}; choose one of {ROW_SAMPLINGS}")
