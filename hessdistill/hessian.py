"""Pure Hessian math: row sampling, batched vmap∘VJP rows, full batched Hessians, finite differences.

Conventions. A batch of B structures is stored flat: positions ``pos`` (Ntot, 3) Å, ``ptr`` (B+1,) atom
offsets. Hessian row j of structure i (j = 3·atom + axis) is ∂²U/∂r_j∂r, i.e. minus the derivative of
force component j with respect to all 3N_i positions, eV/Å².

The batched trick: structures in a batch are independent, so the Hessian of the batch is block-diagonal.
A "lane" is a one-hot cotangent (Ntot, 3) holding one selected row *of every structure at once*; one VJP
of the forces with that lane returns, inside each structure's block of atoms, that structure's selected
row. Sampling s rows per structure therefore costs s VJPs for the whole batch, and a full Hessian costs
max_i 3N_i VJPs for the whole batch. Lanes are laid out as (L, Ntot, 3).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Literal

import torch
from torch import Tensor

from hessdistill.lane_memory import LaneChunker

RowStrategy = Literal["auto", "loop", "vmap"]
log = logging.getLogger(__name__)
VMAP_FALLBACKS = {"count": 0}  # how often a requested vmap fell back to the loop (see vjp_lanes)


def resolve_strategy(strategy: RowStrategy, device: torch.device) -> str:
    """For sampled student rows: "auto" → "vmap" on CUDA, "loop" elsewhere.

    On CPU the loop of autograd.grad is faster for a few differentiable rows (benchmarks/row_strategies.py:
    vmap/loop 0.73–0.92× for PaiNN train steps at s = 1, 4 on 2 cores).
    """
    if strategy == "auto":
        return "vmap" if device.type == "cuda" else "loop"
    if strategy not in ("loop", "vmap"):
        raise ValueError(f"unknown row strategy {strategy!r}; choose auto, loop or vmap")
    return strategy


def sample_hessian_rows(n_atoms: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Sample s distinct Hessian rows per structure, uniformly.

    n_atoms: (B,) atom counts. Returns (B, s) int64 row indices in [0, 3·n_atoms[i]).
    """
    n_rows = 3 * n_atoms.long()
    if s < 1:
        raise ValueError(f"need at least one Hessian row per structure, got s={s}")
    if (n_rows < s).any():
        raise ValueError(f"cannot sample s={s} distinct rows from a structure with {int(n_rows.min())} rows")
    width = int(n_rows.max())
    keys = torch.rand(n_rows.shape[0], width, generator=generator)
    keys[torch.arange(width).expand_as(keys) >= n_rows[:, None]] = 2.0  # never picked
    return keys.argsort(dim=1)[:, :s]


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
    rows: (B, s). Returns (s, Ntot, 3) eV/Å²: lane k holds, in structure i's atoms, ∂F_{rows[i,k]}/∂r.
    For a conservative model this is minus the Hessian row. create_graph=True keeps the result
    differentiable w.r.t. model parameters, as training needs.
    """
    lanes = row_lanes(rows, ptr, dtype=forces.dtype)
    return vjp_lanes(forces, pos, lanes, create_graph, resolve_strategy(strategy, pos.device))


def batched_hessians(
    forces: Tensor, pos: Tensor, ptr: Tensor, chunk_size: int | LaneChunker | None = None,
    strategy: RowStrategy = "auto",
) -> list[Tensor]:
    """Full Hessians H_i = −∂F/∂r of every structure in a batch with max_i 3N_i lanes.

    forces: (Ntot, 3) differentiable w.r.t. pos (Ntot, 3) (computed with create_graph=True).
    chunk_size: lanes per VJP batch (None: all at once), or a ``LaneChunker`` that sizes each chunk from a memory
    budget. Returns a list of B tensors (3N_i, 3N_i) eV/Å², detached.
    strategy "auto" is "vmap" on every device: with tens of lanes one batched backward beats a loop on CPU too
    (benchmarks/teacher_hessians.py, one structure per call: ANI-1x 4.8×, the small MACE test model 1.4×).
    """
    n_rows = 3 * (ptr[1:] - ptr[:-1])
    width = int(n_rows.max())
    if not isinstance(chunk_size, LaneChunker):
        chunk_size = _FixedChunks(width if chunk_size is None else max(1, int(chunk_size)))
    strategy = "vmap" if strategy == "auto" else resolve_strategy(strategy, pos.device)
    blocks, start = [], 0
    while start < width:
        chunk = chunk_size.size(width - start)
        k = torch.arange(start, start + chunk, device=pos.device)
        rows = torch.where(k[None, :] < n_rows[:, None], k[None, :], -1)
        lanes = row_lanes(rows, ptr, dtype=forces.dtype)
        with chunk_size.measure(chunk):
            blocks.append(vjp_lanes(forces, pos, lanes, create_graph=False, strategy=strategy).detach())
        start += chunk
    jac = torch.cat(blocks).flatten(1)  # (width, 3·Ntot): lane k = row k of every structure
    return [-jac[: 3 * (b - a), 3 * a : 3 * b] for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())]


class _FixedChunks:
    """A fixed number of lanes per chunk (the ``LaneChunker`` interface without a budget)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def size(self, remaining: int) -> int:
        return min(self.lanes, remaining)

    def measure(self, lanes: int) -> contextlib.nullcontext:
        return contextlib.nullcontext()


def rows_to_atom_layout(rows: Tensor) -> Tensor:
    """One structure's Hessian rows (s, 3N) → per-atom layout (N, s, 3).

    PyG concatenation of that layout over structures gives (Ntot, s, 3), and ``.permute(1, 0, 2)`` turns it
    into the (s, Ntot, 3) lane layout of ``force_jacobian_rows``.
    """
    s = rows.shape[0]
    return rows.reshape(s, -1, 3).permute(1, 0, 2).contiguous()


def finite_difference_force_jacobian(force_fn: Callable[[Tensor], Tensor], pos: Tensor, delta: float = 1e-3) -> Tensor:
    """Central-difference Jacobian J[a, b] = ∂F_a/∂r_b of one structure's forces, (3N, 3N) eV/Å².

    force_fn: (N, 3) Å → (N, 3) eV/Å. Displacing coordinate b gives *column* b of J; for a conservative model
    J = −H is symmetric, for a direct-force model it need not be (rows from VJPs are J's rows).
    """
    flat = pos.detach().reshape(-1)
    cols = []
    for b in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[b] = delta
        plus = force_fn((flat + step).view_as(pos)).reshape(-1)
        minus = force_fn((flat - step).view_as(pos)).reshape(-1)
        cols.append((plus - minus) / (2 * delta))
    return torch.stack(cols, dim=1)
