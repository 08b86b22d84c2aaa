"""Student Hessian rows: ``loop`` vs ``vmap`` strategy, and the cost of a KD step vs an undistilled step.

Prints times measured in one run and their ratios (machines are shared: compare ratios, not seconds).
    python benchmarks/row_strategies.py [--device cuda] [--batch 16] [--rows 1 4]
"""

from __future__ import annotations

import argparse

import torch
from ase.build import molecule
from torch_geometric.data import Batch

from hessdistill import losses
from hessdistill.data.structures import Structure
from hessdistill.evaluation.speed import timed
from hessdistill.hessian.rows import force_jacobian_rows, sample_batch_rows
from hessdistill.models.painn import PaiNN

MOLECULES = ["CH3CONH2", "CH3COOH", "CH3CH2OH", "C2H6CHOH"]


def step(model, batch, rows, strategy):
    out = model(batch, create_graph=True)
    loss = losses.force_loss(out["forces"], torch.zeros_like(out["forces"]), batch.batch, batch.num_graphs)
    if rows is not None:
        j = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=True, strategy=strategy)
        loss = loss + losses.hessian_kd_loss(j, torch.zeros_like(j), batch.batch, batch.num_graphs)
    loss.backward()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    device = torch.device(args.device)
    data = [Structure.from_atoms(molecule(MOLECULES[k % len(MOLECULES)])).to_data() for k in range(args.batch)]
    for mode in ("direct", "conservative"):
        torch.manual_seed(0)
        model = PaiNN(hidden_channels=128, num_layers=4, num_rbf=32, cutoff=5.0, force_mode=mode).to(device)
        batch = model.ensure_graph(Batch.from_data_list(data)).to(device)
        base = timed(lambda: step(model, batch, None, "loop"), device, args.repeat)
        print(f"{mode:12s} undistilled step: {1e3 * base:7.1f} ms  ({device}, batch {args.batch})")
        for s in args.rows:
            rows = sample_batch_rows(batch.natoms.cpu(), s).to(device)
            t = {k: timed(lambda: step(model, batch, rows, k), device, args.repeat) for k in ("loop", "vmap")}
            print(f"{mode:12s} s={s}: loop {1e3 * t['loop']:7.1f} ms ({t['loop'] / base:4.2f}x undistilled), "
                  f"vmap {1e3 * t['vmap']:7.1f} ms ({t['vmap'] / base:4.2f}x); vmap speedup vs loop: "
                  f"{t['loop'] / t['vmap']:.2f}x")


if __name__ == "__main__":
    main()
