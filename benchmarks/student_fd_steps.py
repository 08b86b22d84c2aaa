"""Finite-difference student rows: relative error vs step, one-sided and central, float32 and float64.

Error = ‖J_fd − J‖ / ‖J‖ over s = 4 sampled rows of a batch of four organic molecules, J the exact force-Jacobian
columns of the same student in float64 (forward mode; equal to rows for a conservative student). Students: the
demo's trained direct PaiNN when ``--checkpoint`` is given, else randomly initialised PaiNNs (direct and
conservative). Prints one table; ``hessian.student_rows.FD_STEP`` is chosen from it.
    python benchmarks/student_fd_steps.py [--checkpoint outputs/demo/hessian/checkpoints/best.ckpt]
"""

from __future__ import annotations

import argparse

import torch
from ase.build import molecule
from torch_geometric.data import Batch

from hessdistill.data.structures import Structure
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.hessian.rows import sample_batch_rows
from hessdistill.models.painn import PaiNN
from hessdistill.training.predictions import predict

MOLECULES = ["CH3CONH2", "CH3COOH", "CH3CH2OH", "C2H6CHOH"]
STEPS = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6, 1e-7]


def columns(model, batch, strategy: str) -> torch.Tensor:
    return predict(model, batch, {"force_jacobian_rows"}, create_graph=True, strategy=strategy)[
        "force_jacobian_rows"].detach().double()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    data = [Structure.from_atoms(molecule(m)).to_data() for m in MOLECULES]
    students = {}
    if args.checkpoint:
        students["trained PaiNN, direct"] = load_student(args.checkpoint)
    for mode in ("direct", "conservative"):
        students[f"random PaiNN, {mode}"] = PaiNN(hidden_channels=64, num_layers=3, num_rbf=20, force_mode=mode)
    from hessdistill.hessian import student_rows

    print(f"{'student':26s} {'dtype':8s} {'scheme':11s} " + " ".join(f"{h:8.0e}" for h in STEPS))
    for name, model in students.items():
        base = Batch.from_data_list(data)
        base.sampled_rows = sample_batch_rows(base.natoms, 4, torch.Generator().manual_seed(1))
        exact = columns(model.double(), _cast(base, torch.float64), "jvp")
        for dtype in (torch.float32, torch.float64):
            model = model.to(dtype)
            batch = _cast(base, dtype)
            for scheme in ("fd", "fd_central"):
                errors = []
                for h in STEPS:
                    student_rows.FD_STEP[(dtype, scheme)] = h
                    fd = columns(model, batch, scheme)
                    errors.append(float((fd - exact).norm() / exact.norm()))
                print(f"{name:26s} {str(dtype)[6:]:8s} {scheme:11s} " + " ".join(f"{e:8.1e}" for e in errors))


def _cast(batch, dtype):
    out = batch.clone()
    out.pos = batch.pos.to(dtype)
    out.cell = batch.cell.to(dtype)
    return out


if __name__ == "__main__":
    main()
