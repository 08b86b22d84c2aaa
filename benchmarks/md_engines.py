"""MD throughput of a student, its deployed file and a teacher, through ASE (one trajectory, the reference path)
and torch-sim (replicas in one batch), in one run, with the ratios.

Per model and engine: ns/day per trajectory (each MD step advances every replica by one timestep) and in total
(× replicas): ASE's velocity Verlet with one trajectory; torch-sim's with 1 replica, 64 replicas, and the replica
count that maximises the total (``hessdistill.evaluation.batched_md.md_throughput``). The deployed student runs in
ASE through metatomic's calculator (``metatomic-ase``, the file alone) and in torch-sim through ``DeployedModel``.
The teacher is ANI-1x (its weights ship with torchani) or a shape-matched MACE (``shape_matched_teachers.py``).
Machines are shared and noisy: compare the ratios of one run.

    OMP_NUM_THREADS=1 python benchmarks/md_engines.py [--student painn_small] [--teacher ani1x|off_small|...]
        [--device cpu] [--ase-steps 20] [--md-steps 3] [--max-replicas 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from ase import units
from ase.md.verlet import VelocityVerlet
from shape_matched_teachers import DEMO, SPECS, ShapeMatchedMACE, build_student

from hessdistill.data.sources.ase_files import read_ase
from hessdistill.evaluation.batched_md import initial_momenta, md_throughput
from hessdistill.evaluation.speed import ns_per_day
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.integrations.deploy import DeployedModel, deploy_student


def ase_ns_per_day(atoms, calculator, steps: int, timestep_fs: float = 1.0) -> float:
    """ns/day of one ASE velocity-Verlet trajectory (after one warm-up step)."""
    atoms = atoms.copy()
    atoms.set_momenta(initial_momenta(atoms, 1, 300.0, 0))
    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    dynamics.run(1)
    start = time.perf_counter()
    dynamics.run(steps)
    return ns_per_day(steps / (time.perf_counter() - start), timestep_fs)


def teacher_of(name: str, device: torch.device, dtype: torch.dtype):
    if name == "ani1x":
        from hessdistill.teachers.ani import ANITeacher

        return ANITeacher(dtype=str(dtype).removeprefix("torch.")).to(device), "ANI-1x"
    model = ShapeMatchedMACE(name).to(device=device, dtype=dtype)
    return model, f"{model.label} (shape-matched)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default="painn_small")
    p.add_argument("--teacher", default="ani1x", choices=["ani1x", *sorted(SPECS)])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--ase-steps", type=int, default=20)
    p.add_argument("--md-steps", type=int, default=3, help="torch-sim steps timed per replica count")
    p.add_argument("--max-replicas", type=int, default=None, help="CPU 256, GPU 8192")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    max_replicas = args.max_replicas or (8192 if device.type == "cuda" else 256)
    atoms = read_ase(DEMO)[0].to_atoms()
    student = build_student(args.student).to(device=device, dtype=dtype)
    teacher, teacher_label = teacher_of(args.teacher, device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = deploy_student(student, Path(folder) / "student.pt", devices=(device.type,))
        from hessdistill.api import deployed_calculator

        models = {f"student {args.student}": (student, TorchCalculator(student)),
                  f"deployed {args.student}": (DeployedModel(path, device), deployed_calculator(path, device.type)),
                  f"teacher {teacher_label}": (teacher, TorchCalculator(teacher))}
        print(f"device {device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
              f"MD of {atoms.get_chemical_formula()} ({len(atoms)} atoms), 1 fs steps")
        rows = {}
        for label, (model, calculator) in models.items():
            row = {"ase_ns_per_day": ase_ns_per_day(atoms, calculator, args.ase_steps)}
            row.update(md_throughput(atoms, model, 64, max_replicas, args.md_steps))
            rows[label] = row
            print(label, {k: round(v, 4) for k, v in row.items()}, flush=True)
    keys = ["ase_ns_per_day", "single_trajectory_ns_per_day", "per_trajectory_ns_per_day", "best_replicas",
            "best_per_trajectory_ns_per_day", "best_total_ns_per_day"]
    print("\nns/day (ase: one trajectory; torch-sim: 1 replica, per trajectory at 64 replicas, best replica count, "
          "per trajectory and total there)")
    print("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")
    print("\nratios")
    for label, row in rows.items():
        ase = row["ase_ns_per_day"]
        print(f"  {label}: torch-sim 1 replica / ASE {row['single_trajectory_ns_per_day'] / ase:.2f}x; "
              f"torch-sim total at best / ASE {row['best_total_ns_per_day'] / ase:.1f}x")
    s, d, t = (rows[label] for label in models)
    for key in ("ase_ns_per_day", "per_trajectory_ns_per_day", "best_per_trajectory_ns_per_day",
                "best_total_ns_per_day"):
        print(f"  student/teacher {key}: {s[key] / t[key]:.2f}x (deployed/teacher {d[key] / t[key]:.2f}x)")


if __name__ == "__main__":
    main()
