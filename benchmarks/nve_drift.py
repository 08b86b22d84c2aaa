"""NVE energy drift of trained students (the paper's Figure 2 analogue): a conservative student (GemNet-T,
``student=gemnet_t``, or a conservative PaiNN, ``student.force_mode=conservative``) against a direct-force one, in
eV/atom/ns over ≥ 10 ps of velocity Verlet from test structures (ASE, ``hessdistill.evaluation.md.nve_drift``).

A conservative student's forces are −∇U of its energy, so its total energy drifts only by the integrator's error; a
direct student's energy is not the potential of its forces and drifts. The table: per model, the drift (signed slope
of total energy per atom against time, mean ± std over starts), its mean magnitude, and the largest deviation of the
total energy from its start. ``--teacher`` adds the runs' teacher (conservative) as a reference row: its drift is the
integrator's floor at the chosen step, which must lie well below the direct student's for the comparison to mean
anything (a tiny demo run from rattled molecules, 0.2 ps: ANI-1x drifted 58 eV/atom/ns at 1 fs, 1.9 at 0.25 fs, while
the direct student drifted 110–140 at both; hence 0.5 fs by default).

    # two trained runs (their checkpoints: test_ckpt of each run), 4 test structures each, 10 ps at 0.5 fs
    python benchmarks/nve_drift.py --runs gemnet_t=outputs/<run A> gemnet_dt=outputs/<run B> --ps 10 --count 4 \\
        --teacher --out outputs/nve_drift
    # proof that it runs: 0.05 ps
    python benchmarks/nve_drift.py --runs kd=outputs/<run> --ps 0.05 --count 1 --out outputs/nve_drift_toy

Each (model, start) writes ``<out>/<model>/start<k>.json`` when done and is skipped when it exists, so a killed
benchmark continues; ``results.md`` is the table of everything under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from hessdistill.cli.train import RUN_CONFIG
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.devices import resolve_device
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.evaluation.md import PS_PER_NS, nve_drift


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR", help="training run directories")
    p.add_argument("--split", default="test", help="the split whose first --count structures start the runs")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--ps", type=float, default=10.0, help="simulated time per run (ps)")
    p.add_argument("--timestep-fs", type=float, default=0.5, help="integrator energy error ∝ dt² (see above)")
    p.add_argument("--temperature", type=float, default=300.0, help="Maxwell–Boltzmann start velocities (K)")
    p.add_argument("--record-every", type=int, default=20, help="steps between recorded total energies")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="students' precision")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", action="store_true", help="add the first run's teacher as a reference row")
    p.add_argument("--out", default="outputs/nve_drift")
    return p.parse_args(argv)


def run_config(run_dir: Path):
    if not (run_dir / RUN_CONFIG).is_file():
        raise SystemExit(f"{run_dir}: not a training run directory (no {RUN_CONFIG})")
    return OmegaConf.load(run_dir / RUN_CONFIG)


def starts(run_dir: Path, split: str, count: int) -> list:
    """The first ``count`` structures of the run's ``split`` (its splits.json), as ASE Atoms."""
    cfg = run_config(run_dir)
    dm = StoreDataModule(store=cfg.subset.store, split=tuple(cfg.subset.split), split_seed=cfg.subset.split_seed,
                         split_by=cfg.subset.get("split_by"), split_file=str(run_dir / "splits.json"))
    return [dm.store.structure(int(i)).to_atoms() for i in dm.splits[split][:count]]


def models(args) -> dict[str, tuple[object, str, list]]:
    """name → (model, force mode, start structures)."""
    device, out = resolve_device(args.device), {}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        run_dir = Path(path)
        cfg = run_config(run_dir)
        student = load_student(run_dir / "checkpoints" / f"{cfg.get('test_ckpt', 'last')}.ckpt", device,
                               getattr(torch, args.dtype))
        out[name] = (student, student.force_mode, starts(run_dir, args.split, args.count))
    if args.teacher:
        first = Path(args.runs[0].partition("=")[2])
        cfg = run_config(first)
        out[f"teacher {cfg.teacher.name}"] = (hydra.utils.instantiate(cfg.teacher).to(device), "conservative",
                                              starts(first, args.split, args.count))
    return out


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| model | force mode | starts | ps | drift eV/atom/ns | mean abs drift eV/atom/ns | "
             "max abs(E − E0) meV/atom |", "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        drifts = np.array([r["drift_eV_per_atom_per_ps"] for r in runs]) * PS_PER_NS
        spread = f" ± {drifts.std(ddof=1):.3g}" if len(drifts) > 1 else ""
        lines.append(f"| {name} | {runs[0]['force_mode']} | {len(runs)} | {runs[0]['times_ps'][-1]:g} | "
                     f"{drifts.mean():.3g}{spread} | {np.abs(drifts).mean():.3g} | "
                     f"{1e3 * max(r['max_energy_deviation_eV_per_atom'] for r in runs):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    steps = int(round(args.ps * 1000 / args.timestep_fs))
    for name, (model, force_mode, structures) in models(args).items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for k, atoms in enumerate(structures):
            done = out / name / f"start{k}.json"
            if not done.exists():
                result = nve_drift(atoms, model, steps, args.temperature, args.timestep_fs, seed=k,
                                   record_every=args.record_every)
                done.write_text(json.dumps({**result, "force_mode": force_mode, "atoms": len(atoms)}))
    results = {p.name: [json.loads(f.read_text()) for f in sorted(p.glob("start*.json"))]
               for p in sorted(out.iterdir()) if p.is_dir() and any(p.glob("start*.json"))}
    (out / "results.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
