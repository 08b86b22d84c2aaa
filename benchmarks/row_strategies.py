"""The cost of a Hessian-KD training step vs an undistilled one, for every student-row strategy.

For each student × force mode × batch size × rows per structure s: one training step (forward, loss on forces and
rows, backward) by each ``row_strategy`` (``hessian.student_rows``), as a ratio to an undistilled step (forces
only) of the same batch. Steps are timed in interleaved rounds (undistilled, then each strategy, round after round)
and each figure is a median, so a busy machine shifts them all alike. Also printed: the cost of one extra row
((t(s_max) − t(s_min)) / (s_max − s_min), in undistilled steps) and the largest relative error of each strategy's
rows against the exact columns (``jvp`` for direct, ``loop`` for conservative students). ``--compile`` adds
``fd+compile``: a torch.compiled copy of a direct student with fd rows (its compilation is not timed), as a ratio to
the eager undistilled step.
    python benchmarks/row_strategies.py [--device cuda] [--students painn_small gemnet_dt] [--batch 8 32]
                                        [--rows 1 4 16] [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import hydra
import torch
from ase.build import molecule
from torch_geometric.data import Batch

import hessdistill as hd
from hessdistill import losses
from hessdistill.data.structures import Structure
from hessdistill.hessian.rows import sample_batch_rows
from hessdistill.hessian.student_rows import STUDENT_ROW_STRATEGIES
from hessdistill.training.module import compile_student
from hessdistill.training.predictions import predict

MOLECULES = ["CH3CONH2", "CH3COOH", "CH3CH2OH", "C2H6CHOH"]
STUDENTS = ["painn_small", "schnet", "gemnet_dt", "escn", "mace"]


def step(model, batch, strategy: str | None) -> torch.Tensor:
    """One training step's work (no optimiser update): ``strategy`` None is the undistilled step."""
    wanted = {"forces"} if strategy is None else {"forces", "force_jacobian_rows"}
    out = predict(model, batch, wanted, create_graph=True, strategy=strategy or "loop")
    loss = losses.force_loss(out["forces"], torch.zeros_like(out["forces"]), batch.batch, batch.num_graphs)
    if strategy is not None:
        rows = out["force_jacobian_rows"]
        loss = loss + losses.hessian_kd_loss(rows, torch.zeros_like(rows), batch.batch, batch.num_graphs)
    loss.backward()
    return out.get("force_jacobian_rows")


def seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def build(name: str, mode: str, device: torch.device):
    torch.manual_seed(0)
    config = hd.compose("train", f"student={name}", f"student.force_mode={mode}").student
    return hydra.utils.instantiate(config).to(device)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--students", nargs="+", default=STUDENTS)
    p.add_argument("--modes", nargs="+", default=["direct", "conservative"])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--strategies", nargs="+", default=list(STUDENT_ROW_STRATEGIES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, medians of {args.rounds} interleaved rounds; "
          f"KD step / undistilled step at the same batch")
    columns = [*args.strategies, *(["fd+compile"] if args.compile else [])]
    head = " ".join(f"{k:>10s}" for k in columns)
    print(f"{'student':12s} {'forces':12s} {'batch':>5s} {'s':>3s} {'undist ms':>9s} {head}   fastest")
    for name in args.students:
        for mode in args.modes:
            model = build(name, mode, device)
            runs = {k: (model, k) for k in args.strategies}  # column → (model, strategy)
            if args.compile and mode == "direct":
                runs["fd+compile"] = (build(name, mode, device), "fd")
                compile_student(runs["fd+compile"][0], "fd")
            for size in args.batch:
                data = [Structure.from_atoms(molecule(MOLECULES[k % len(MOLECULES)])).to_data() for k in range(size)]
                batch = model.ensure_graph(Batch.from_data_list(data)).to(device)
                ratios, errors = {}, {k: 0.0 for k in runs}
                for s in args.rows:
                    batch.sampled_rows = sample_batch_rows(batch.natoms.cpu(), s).to(device)
                    exact = step(model, batch, "jvp" if mode == "direct" else "loop").detach()
                    for k, (net, strategy) in runs.items():  # warm-up (and compilation), each strategy's row error
                        rows = step(net, batch, strategy).detach()
                        errors[k] = max(errors[k], float((rows - exact).norm() / exact.norm()))
                    timed = {None: (model, None), **runs}
                    times = {k: [] for k in timed}
                    for _ in range(args.rounds):
                        for k, (net, strategy) in timed.items():
                            times[k].append(seconds(lambda: step(net, batch, strategy), device))
                    base = statistics.median(times[None])
                    ratios[s] = {k: statistics.median(times[k]) / base for k in runs}
                    cells = " ".join(f"{ratios[s][k]:9.2f}x" if k in runs else f"{'-':>10s}" for k in columns)
                    print(f"{name:12s} {mode:12s} {size:5d} {s:3d} {1e3 * base:9.1f} {cells}   "
                          f"{min(ratios[s], key=ratios[s].get)}", flush=True)
                lo, hi = min(args.rows), max(args.rows)
                if hi > lo:
                    slope = " ".join(f"{(ratios[hi][k] - ratios[lo][k]) / (hi - lo):9.2f}x" if k in runs
                                     else f"{'-':>10s}" for k in columns)
                    print(f"{'':12s} {'':12s} {'':5s} {'row':>3s} {'':9s} {slope}   (cost of one more row)")
                print(f"{'':12s} {'':12s} {'':5s} {'err':>3s} {'':9s} "
                      + " ".join(f"{errors[k]:10.1e}" if k in runs else f"{'-':>10s}" for k in columns)
                      + "   (rows vs exact)")


if __name__ == "__main__":
    main()
