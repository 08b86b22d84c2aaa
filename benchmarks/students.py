"""Student zoo: inference throughput and the cost of a Hessian-KD training step, per student, in one run.

For each student config (``conf/student/<name>.yaml``, the paper's hyper-parameters) and force mode:
  - inference structures/s at batch 64 and at the throughput-maximising batch (the batch doubles from 64 until
    throughput stops improving by 5 %, memory runs out, or --max-batch), on demo molecules (5–12 atoms);
  - a KD training step (forces + s sampled Hessian rows, backward) at s = 1 and s = 4 relative to an undistilled
    step (forces only) on the same batch (paper, GPU: s = 1 costs 1.6× for PaiNN, 2× for GemNet-dT).
Machines are shared and noisy: compare the ratios of one run.

    python benchmarks/students.py [--students painn schnet gemnet_dt mace] [--device cuda] [--max-batch 4096]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from torch_geometric.data import Batch

from hessdistill.cli.config_path import CONFIG_DIR
from hessdistill.data.graph import radius_graph
from hessdistill.data.sources.ase_files import read_ase
from hessdistill.hessian import sample_hessian_rows
from row_strategies import step, timed

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "hcno_wb97x_631gd.extxyz"


def build(name: str, force_mode: str, device: torch.device):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"student={name}", f"student.force_mode={force_mode}"]).student
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg).to(device), cfg


def graph_batch(model, structures, size: int, device: torch.device) -> Batch:
    """A batch of ``size`` structures (cycled) with each structure's radius graph at the student's cutoff."""
    data = []
    for k in range(size):
        d = structures[k % len(structures)].to_data()
        d.edge_index, d.edge_shift = radius_graph(d.pos, model.cutoff, model.max_neighbors, d.cell[0], d.pbc[0])
        data.append(d)
    return Batch.from_data_list(data).to(device)


def inference_rate(model, structures, size: int, device: torch.device, repeat: int) -> float:
    batch = graph_batch(model, structures, size, device)
    return size / timed(lambda: model.energy_forces(batch), device, repeat)


def best_batch(model, structures, device, repeat, max_batch, rate64: float) -> tuple[int, float]:
    """Grow the batch from 64 (measured at ``rate64`` structures/s) while throughput improves by ≥ 5 %;
    returns (batch, structures/s)."""
    size, rate = 64, rate64
    while 2 * size <= max_batch:
        try:
            bigger = inference_rate(model, structures, 2 * size, device, repeat)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if bigger < 1.05 * rate:
            break
        size, rate = 2 * size, bigger
    return size, rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--students", nargs="+", default=["painn", "schnet", "gemnet_dt", "mace"],
                   help="student configs; each runs direct and conservative (gemnet_dt conservative = GemNet-T)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-batch", type=int, default=8, help="structures per KD training step (paper: 4–8)")
    p.add_argument("--max-batch", type=int, default=None, help="largest inference batch tried (CPU: 256, GPU: 8192)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU default: all cores)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_batch = args.max_batch or (8192 if device.type == "cuda" else 256)
    structures = read_ase(DEMO)[::6]  # 30 structures across the six molecules
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); demo molecules of "
          f"{min(s.n_atoms for s in structures)}–{max(s.n_atoms for s in structures)} atoms")
    header = (f"{'student':9s} {'forces':12s} {'params':>9s} {'struct/s @64':>13s} {'best batch':>10s} "
              f"{'struct/s @best':>14s} {'KD s=1':>8s} {'KD s=4':>8s}")
    print(header)
    for name in args.students:
        for mode in ("direct", "conservative"):
            model, cfg = build(name, mode, device)
            n_params = sum(q.numel() for q in model.parameters())
            rate64 = inference_rate(model, structures, 64, device, args.repeat)
            size, rate = best_batch(model, structures, device, args.repeat, max_batch, rate64)
            batch = graph_batch(model, structures, args.train_batch, device)
            base = timed(lambda: step(model, batch, None, "auto"), device, args.repeat)
            ratios = []
            for s in (1, 4):
                rows = sample_hessian_rows(batch.natoms.cpu(), s, torch.Generator().manual_seed(0)).to(device)
                ratios.append(timed(lambda: step(model, batch, rows, "auto"), device, args.repeat) / base)
            print(f"{name:9s} {mode:12s} {n_params:9d} {rate64:13.1f} {size:10d} {rate:14.1f} "
                  f"{ratios[0]:7.2f}x {ratios[1]:7.2f}x")


if __name__ == "__main__":
    main()
