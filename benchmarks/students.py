"""Student zoo: inference throughput and the cost of a Hessian-KD training step, per student, in one run.

For each student config (``conf/student/<name>.yaml``, the paper's hyper-parameters) and force mode:
  - inference structures/s (energies and forces from positions, radius graph included) at batch 64 and at the
    throughput-maximising batch (``hessdistill.evaluation.speed``), on demo molecules (5–12 atoms);
  - a KD training step (forces + s sampled Hessian rows, backward) at s = 1 and s = 4 relative to an undistilled
    step (forces only) on the same batch (paper, GPU: s = 1 costs 1.6× for PaiNN, 2× for GemNet-dT).
Machines are shared and noisy: compare the ratios of one run.

    python benchmarks/students.py [--students painn schnet gemnet_dt mace escn] [--device cuda] [--max-batch 4096]
"""

from __future__ import annotations

import argparse

import hydra
import torch
from hydra import compose, initialize_config_dir
from row_strategies import step
from torch_geometric.data import Batch

from hessdistill.config import CONFIG_DIR, dataset_path
from hessdistill.data.sources.ase_files import read_ase
from hessdistill.evaluation.speed import speed_report, timed
from hessdistill.hessian.rows import sample_batch_rows

DEMO = dataset_path("demo/hcno_wb97x_631gd.extxyz")


def build(name: str, force_mode: str, device: torch.device):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"student={name}", f"student.force_mode={force_mode}"]).student
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg).to(device), cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--students", nargs="+", default=["painn", "schnet", "gemnet_dt", "mace", "escn"],
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
    structures = list(read_ase(DEMO))[::6]  # 30 structures across the six molecules
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); demo molecules of "
          f"{min(s.n_atoms for s in structures)}–{max(s.n_atoms for s in structures)} atoms")
    header = (f"{'student':9s} {'forces':12s} {'params':>9s} {'struct/s @64':>13s} {'best batch':>10s} "
              f"{'struct/s @best':>14s} {'KD s=1':>8s} {'KD s=4':>8s}")
    print(header)
    for name in args.students:
        for mode in ("direct", "conservative"):
            model, cfg = build(name, mode, device)
            n_params = sum(q.numel() for q in model.parameters())
            speed = speed_report(model, structures, 64, max_batch, args.repeat)
            rate64, size, rate = speed["structures_per_s"], speed["best_batch"], speed["best_structures_per_s"]
            batch = model.ensure_graph(Batch.from_data_list([structures[k % len(structures)].to_data()
                                                             for k in range(args.train_batch)])).to(device)
            base = timed(lambda: step(model, batch, None, "auto"), device, args.repeat)
            ratios = []
            for s in (1, 4):
                rows = sample_batch_rows(batch.natoms.cpu(), s, torch.Generator().manual_seed(0)).to(device)
                ratios.append(timed(lambda: step(model, batch, rows, "auto"), device, args.repeat) / base)
            print(f"{name:9s} {mode:12s} {n_params:9d} {rate64:13.1f} {size:10d} {rate:14.1f} "
                  f"{ratios[0]:7.2f}x {ratios[1]:7.2f}x")


if __name__ == "__main__":
    main()
