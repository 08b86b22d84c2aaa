"""How a training step computes the student's sampled force-Jacobian rows (``row_strategy``), and which way ``auto``
takes, from a measured table.

- ``loop`` / ``vmap``: reverse over reverse, s VJPs of the forces with create_graph (``hessian.rows``); exact rows.
- ``jvp``: forward mode (``hessian.forward_mode``), one dual forward per row; exact columns.
- ``fd`` / ``fd_central``: finite differences (``hessian.finite_difference.finite_difference_lanes``): the s (2s)
  displaced copies of the batch run with the batch in one larger forward, so the rows cost one wider forward and one
  backward instead of a double backward. Columns, with an O(h) (O(h²)) step error; the step is ``FD_STEP``.

Columns equal rows for a conservative student (J = −H is symmetric). For a direct-force student they differ, and
``jvp``/``fd`` match the columns to the teacher's (symmetric) Hessian rows, as the authors' code does.
Evaluation (validation, test, ``hessdistill-evaluate``) always scores exact VJP rows, so metrics do not depend on
the training strategy.
"""

from __future__ import annotations

from typing import Literal

import torch

StudentRowStrategy = Literal["auto", "loop", "vmap", "jvp", "fd", "fd_central"]
STUDENT_ROW_STRATEGIES = ("loop", "vmap", "jvp", "fd", "fd_central")

# Finite-difference step (Å) by the dtype the student computes in and the scheme: the step of least worst-case error
# in the table below (benchmarks/student_fd_steps.py; relative error ‖J_fd − J‖/‖J‖ against the exact columns in
# float64, s = 4 rows of four organic molecules; students: the demo's trained PaiNN, random PaiNNs):
#
#   step (Å)                          1e-2    3e-3    1e-3    3e-4    1e-4    1e-5    1e-6    1e-7
#   trained direct     f32  fd        2.8e-2  8.4e-3  2.8e-3  8.8e-4  7.7e-4  7.5e-3  8.5e-2  6.1e-1
#   random direct      f32  fd        1.5e-2  4.6e-3  1.7e-3  2.5e-3  8.3e-3  6.8e-2  5.8e-1  4.8
#   random conserv.    f32  fd        2.6e-2  7.9e-3  2.6e-3  1.4e-3  4.0e-3  3.3e-2  3.0e-1  2.7
#   trained direct     f32  central   2.0e-3  1.9e-4  4.1e-5  1.2e-4  5.2e-4  4.0e-3  2.9e-2  3.0e-1
#   random direct      f32  central   3.5e-4  1.6e-4  4.2e-4  1.3e-3  4.1e-3  3.8e-2  3.2e-1  2.5
#   random conserv.    f32  central   5.7e-3  6.1e-4  2.3e-4  6.5e-4  1.9e-3  1.7e-2  1.6e-1  1.4
#   worst of three     f64  fd        2.8e-2  8.4e-3  2.8e-3  8.4e-4  2.8e-4  2.8e-5  2.8e-6  2.8e-7
#   worst of three     f64  central   5.7e-3  6.1e-4  6.8e-5  6.2e-6  6.9e-7  6.9e-9  7.1e-10 8.1e-9
#
# One-sided truncation falls ∝ h; in float32 round-off (∝ ε/h) takes over below ~3e-4 Å, so the authors' 1e-4 Å
# costs up to 8e-3 here. At the chosen steps the worst errors are 2.5e-3 (f32 fd), 4.2e-4 (f32 central), 2.8e-7
# (f64 fd) and 7e-10 (f64 central): far below any student's Hessian error.
FD_STEP = {(torch.float32, "fd"): 3e-4, (torch.float32, "fd_central"): 1e-3,
           (torch.float64, "fd"): 1e-7, (torch.float64, "fd_central"): 1e-6}

# row_strategy=auto, by (device type, force mode): the fastest strategy whose rows are within tolerance
AUTO = {("cpu", "direct"): "fd", ("cpu", "conservative"): "fd",
        ("cuda", "direct"): "vmap", ("cuda", "conservative"): "vmap"}


def fd_step(dtype: torch.dtype, strategy: str) -> float:
    """Finite-difference step (Å) for a student computing in ``dtype`` (float32's for any other dtype)."""
    return FD_STEP.get((dtype, strategy), FD_STEP[(torch.float32, strategy)])


def resolve_student_strategy(strategy: str, device: torch.device, force_mode: str) -> str:
    """``auto`` → the measured choice for this device type and force mode (``AUTO``; a device type not measured
    takes CUDA's choice); anything else is checked and returned."""
    if strategy == "auto":
        return AUTO.get((device.type, force_mode), AUTO[("cuda", force_mode)])
    if strategy not in STUDENT_ROW_STRATEGIES:
        raise ValueError(f"unknown row_strategy {strategy!r}; choose auto, {', '.join(STUDENT_ROW_STRATEGIES)}")
    return strategy
