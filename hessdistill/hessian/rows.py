"""Sampled Hessian rows: which rows (one sampler, one seed rule), their one-hot lanes, and the batched VJPs that
compute them.

The batched trick: structures in a batch are independent, so the Hessian of the batch is block-diagonal. A lane is
a one-hot cotangent (Ntot, 3) holding one selected row *of every structure at once*; one VJP of the forces with that
lane returns, inside each structure's block of atoms, that structure's selected row. Sampling s rows per structure
therefore costs s VJPs for the whole batch. Lanes are laid out as (s, Ntot, 3) (see ``hessdistill.hessian``).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from torch import Tensor

RowStrategy = Literal["auto", "loop", "vmap"]
log = logging.getLogger(__name__)
VMAP_FALLBACKS = {"count": 0}  # how often a requested vmap fell back to the loop (see vjp_lanes)
EVAL_ROWS_SEED = 10_000  # fixed evaluation rows: structure i of split seed k draws with 10 000·(1 + k) + i


def resolve_strategy(strategy: RowStrategy, device: torch.device) -> str:
    """Exact VJP rows (teachers, evaluation, and the student's training rows by loop/vmap, which
    ``hessian.student_rows`` chooses among more): "auto" → "vmap" on CUDA, "loop" elsewhere, where a loop of
    autograd.grad beats vmap for a few rows (benchmarks/row_strategies.py: vmap 1.0–1.9× the loop's cost on CPU).
    """
    if strategy == "auto":
        return "vmap" if device.type == "cuda" else "loop"
    if strategy not in ("loop", "vmap"):
        raise ValueError(f"unknown row strategy {strategy!r}; choose auto, loop or vmap")
    return strategy


def mixed_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative keys, e.g. (run seed, epoch) for a training order or (run seed, epoch,
    structure) for a structure's rows: independent streams, the same on every resume."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rows_generator(structure: int, seed: int, epoch: int | None = None) -> torch.Generator:
    """The one seed rule for Hessian-row draws (training, validation, evaluation).

    Training (``epoch`` given): fresh rows every epoch, seeded by (run seed, epoch, structure), so a resumed run
    draws what an uninterrupted one would. Evaluation (``epoch`` None): the same rows every time, seeded by
    ``EVAL_ROWS_SEED``·(1 + split seed) + structure, so validation and ``hessdistill-evaluate`` score the same rows.
    """
    if epoch is None:
        return torch.Generator().manual_seed(EVAL_ROWS_SEED * (1 + seed) + structure)
    return torch.Generator().manual_seed(mixed_seed(seed, epoch, structure))


def sample_rows(available: Tensor, s: int, generator: torch.Generator | None = None,
                where: str = "structure") -> Tensor:
    """The one row sampler: s distinct rows drawn uniformly from ``available`` (1-D row indices: all 3N of a
    structure, or the k a row-subset store holds). Returns (s,) int64. ``where`` names the structure in errors."""
    if s < 1:
        raise ValueError(f"{where}: need at least one Hessian row per structure, got s={s}")
    if len(available) < s:
        raise ValueError(f"{where}: {s} Hessian rows asked per structure, {len(available)} available")
    return available[torch.randperm(len(available), generator=generator)[:s]]


def sample_batch_rows(n_atoms: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """``sample_rows`` over all 3N_i rows of each structure of a batch: n_atoms (B,) → (B, s) local row indices."""
    return torch.stack([sample_rows(torch.arange(3 * int(n)), s, generator, f"structure {k}")
                        for k, n in enumerate(n_atoms.tolist())])


def row_lanes(rows: Tensor, ptr: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot cotangent lanes for selected rows.

    rows: (B, L) local row indices, or -1 where a structure has no row in that lane. ptr: (B+1,).
    Returns (L, Ntot, 3): lane k has a 1 at (ptr[i] + rows[i,k] // 3, rows[i,k] % 3) for every structure i.
    """
    n_total = int(ptr[-1])
    n_lanes = rows.shape[1]
    lanes = torch.zeros(n_lanes, n_total * 3, dtype=dtype, device=ptr.device)
    valid = rows >= 0
    flat = 3 * ptr[:-1, None] + rows  # (B, L) flat index into the batch's 3·Ntot coordinates
    lane_id = torch.arange(n_lanes, device=ptr.device).expand_as(rows)
    lanes[lane_id[valid], flat[valid]] = 1.0
    return lanes.view(n_lanes, n_total, 3)


def vjp_lanes(output: Tensor, inputs: Tensor, lanes: Tensor, create_graph: bool, strategy: str) -> Tensor:
    """VJPs of ``output`` w.r.t. ``inputs`` for each lane: (L, *output.shape) → (L, *inputs.shape).

    strategy "vmap" runs torch.func.vmap over autograd.grad (one batched backward); "loop" runs L backwards.
    If vmap fails (a model op without a batching rule) the loop is used with a logged warning, and
    ``VMAP_FALLBACKS["count"]`` counts such fallbacks, so a slow path is never taken silently.
    The graph of ``output`` is retained so further lanes or the loss backward can reuse it.
    """

    def vjp(v: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(output, inputs, v, retain_graph=True, create_graph=create_graph, allow_unused=True)
        return torch.zeros_like(inputs) if g is None else g

    if lanes.shape[0] == 0:
        return inputs.new_zeros((0, *inputs.shape))
    if strategy == "vmap":
        try:
            return torch.func.vmap(vjp)(lanes)
        except RuntimeError as exc:  # an op of the model has no batching rule: fall back, but never silently
            VMAP_FALLBACKS["count"] += 1
            log.warning("vmap over the VJP failed (%s); computing %d lanes in a loop instead (fallback #%d)",
                        str(exc).splitlines()[0][:200], lanes.shape[0], VMAP_FALLBACKS["count"])
    return torch.stack([vjp(v) for v in lanes])


def force_jacobian_rows(
    forces: Tensor, pos: Tensor, rows: Tensor, ptr: Tensor, create_graph: bool = True, strategy: RowStrategy = "auto"
) -> Tensor:
    """Rows ∂F_j/∂r of the force Jacobian for s sampled rows per structure (never the full matrix).

    forces: (Ntot, 3) eV/Å, a differentiable function of pos (Ntot, 3) Å. For a direct-force model these are
    the force head's outputs; for a conservative model F = −∇U computed with create_graph=True.
    rows: (B, s). Returns lanes (s, Ntot, 3) eV/Å²: lane k holds, in structure i's atoms, ∂F_{rows[i,k]}/∂r.
    For a conservative model this is minus the Hessian row. create_graph=True keeps the result
    differentiable w.r.t. model parameters, as training needs.
    """
    lanes = row_lanes(rows, ptr, dtype=forces.dtype)
    return vjp_lanes(forces, pos, lanes, create_graph, resolve_strategy(strategy, pos.device))
