"""Students that reach their teacher (#13, #28): the README's results table — undistilled, Hessian KD (s = 4, s = 1),
Hessian-vector-product KD (k = 4, k = 1 probes: the cost of s = 4, s = 1 rows), + teacher-labelled augmentation
(rattle, normal modes, teacher MD; forces only or fitted molecule offsets), + on-policy rounds, + both (rattles, then
rounds), + importance-sampled rows, + the worst-rows sampler — per student, as mean ± std over seeds.

Honest hygiene: λ_KD of every variant is chosen on the *validation* split (the mean over seeds of the final EMA
student's validation force MAE), never on the test split; the table reports that λ's test metrics. Columns: test
force MAE (meV/Å), the gate — its ratio to the teacher's force MAE (≤ 1: the student reaches its teacher), its
change against the same student undistilled (the #28 target: ≤ −30 %) and the student's speed against the teacher
(structures/s at batch 64, measured once per student on --device) —, energy MAE (meV/atom), Hessian-row MAE (eV/Å²),
NVT stability (stable runs of those started from test structures), epochs trained (fewer than --epochs when
``stopping=early`` stopped a run), wall time per run, and the teacher calls a variant spends beyond the subset's own
labels (force calls and Hessians of added structures: MD steps, labels; the added stores are built once and shared by
all runs of a variant). The teacher's own row comes from the test metrics of its labels. Further Hydra overrides
apply to every run, e.g. ``stopping=early scheduler=cosine``.

    # the README table (hours on a GPU): scl_organics, ANI-2x, two students, 3 seeds, a λ_KD grid
    python benchmarks/reach_teacher.py --subset scl_organics --teacher ani2x --students painn_small painn \\
        --epochs 150 --seeds 0 1 2 --lambdas 1 3 10 --out outputs/reach_teacher
    # proof that it runs: the demo set, a tiny student, 2 epochs, one seed, one λ (minutes on a CPU)
    python benchmarks/reach_teacher.py --toy --out outputs/reach_teacher_toy

Every run writes ``<out>/<student>/<variant>/<run>/result.json`` (config, val/test metrics, MD, timings) when it
ends; runs that have one are skipped, so an interrupted benchmark continues where it stopped, and several processes
may share one --out (e.g. one per variant, with ``OMP_NUM_THREADS`` set so threads ≤ cores). Each process then
gathers every finished run under --out into ``results.json`` and ``results.md`` (the table); ``--table`` only gathers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import hessdistill as hd
from hessdistill.augment.run import augment_store_path
from hessdistill.cli.train import RUN_CONFIG
from hessdistill.data.store import HessianStore

KD = ["distill=hessian"]
HVP = ["distill=hessian_hvp"]
ON_POLICY = {"onpolicy", "rattle_onpolicy"}  # variants trained by hd.onpolicy (its rounds) rather than hd.train
VARIANTS = {  # name → overrides on the experiment (λ_KD and rows come from the grid and here)
    "undistilled": ["distill=undistilled"],
    "hessian_s4": [*KD, "rows=4"],
    "hessian_s1": [*KD, "rows=1"],
    "hvp_k4": [*HVP, "probes=4"],
    "hvp_k1": [*HVP, "probes=1"],
    "rattle": [*KD, "rows=4", "augment=rattle"],
    "rattle_molecule_offset": [*KD, "rows=4", "augment=rattle", "teacher_energy=molecule_offset"],
    "normal_modes": [*KD, "rows=4", "augment=normal_modes"],
    "teacher_md": [*KD, "rows=4", "augment=teacher_md"],
    "onpolicy": [*KD, "rows=4"],
    "rattle_onpolicy": [*KD, "rows=4", "augment=rattle"],
    "rows_teacher_norm": [*KD, "rows=4", "row_sampling=teacher_norm"],
    "rows_residual": [*KD, "rows=4", "row_sampling=residual"],
    "rows_worst": [*KD, "rows=4", "row_sampling=worst_rows"],
}
TOY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8"]  # --toy: every run, and by variant
ONE_COPY = ["augment.generator.copies=1"]
TOY_ROUNDS = ["onpolicy.starts=4", "onpolicy.select=4", "onpolicy.md.steps=20", "onpolicy.md.interval=5"]
TOY_VARIANTS = {"rattle": ONE_COPY, "rattle_molecule_offset": ONE_COPY, "normal_modes": ONE_COPY,
                "teacher_md": ["augment.generator.temperatures_K=[500.0]", "augment.generator.snapshots=1"],
                "onpolicy": TOY_ROUNDS, "rattle_onpolicy": ONE_COPY + TOY_ROUNDS}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="demo", help="experiment config the variants start from")
    p.add_argument("--subset", default=None, help="subset config (default: the experiment's)")
    p.add_argument("--teacher", default=None, help="teacher config (default: the experiment's)")
    p.add_argument("--store", default=None, help="the subset's store (default: the subset config's)")
    p.add_argument("--students", nargs="+", default=["painn_small"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lambdas", nargs="+", type=float, default=[1.0, 3.0, 10.0], help="λ_KD grid (KD variants)")
    p.add_argument("--rounds", type=int, default=2, help="on-policy rounds; the epochs are split evenly")
    p.add_argument("--md-count", type=int, default=4, help="NVT runs from test structures per trained student")
    p.add_argument("--md-steps", type=int, default=1000)
    p.add_argument("--device", default="auto", help="evaluation and augmentation device")
    p.add_argument("--toy", action="store_true", help="2 epochs, seed 0, λ 3, a tiny student, short MD")
    p.add_argument("--out", default="outputs/reach_teacher")
    p.add_argument("--table", action="store_true", help="only gather the finished runs under --out into the table")
    p.add_argument("overrides", nargs="*", help="further Hydra overrides for every run")
    args = p.parse_args(argv)
    if args.toy:
        args.epochs, args.seeds, args.lambdas, args.rounds = 2, [0], [3.0], 1
        args.md_count, args.md_steps = 1, 20
    return args


def base_overrides(args, student: str, variant: str) -> list[str]:
    chosen = [f"experiment={args.experiment}", f"student={student}", f"augment.device={args.device}",
              "augment.progress=false", "trainer.enable_progress_bar=false"]
    chosen += [f"subset={args.subset}"] if args.subset else []
    chosen += [f"teacher={args.teacher}"] if args.teacher else []
    chosen += [f"subset.store={args.store}"] if args.store else []
    chosen += VARIANTS[variant]
    if args.toy:
        chosen += TOY + TOY_VARIANTS.get(variant, [])
    return chosen + list(args.overrides)


def evaluate(run_dir: str, split: str, args, md: bool) -> dict:
    """The final (EMA) student's metrics on ``split``, with NVT stability from that split's structures if ``md``."""
    result = hd.evaluate(run=run_dir, split=split, device=args.device, output_dir=Path(run_dir) / f"evaluate-{split}",
                         **{"speed.enabled": False, "relax.enabled": False, "spectra.enabled": False,
                            "md.enabled": md, "md.count": args.md_count, "md.steps": args.md_steps,
                            "md.nve_steps": 0})
    out = {"accuracy": result["accuracy"]}
    if md:
        out["md"] = {row["model"]: row for row in result["md_summary"]}
    return out


RESULT = "result.json"


def run_path(out: Path, student: str, variant: str, kd: float | None, seed: int) -> Path:
    return out / student / variant / (f"kd{kd:g}-seed{seed}" if kd is not None else f"seed{seed}")


def train_one(args, student: str, variant: str, kd: float | None, seed: int, out: Path) -> dict:
    """One run of a variant: trained (on-policy: with its rounds), evaluated on val and test."""
    run_dir = run_path(out, student, variant, kd, seed)
    overrides = [*base_overrides(args, student, variant), f"seed={seed}",
                 *([f"weights.hessian={kd}"] if kd is not None else [])]
    began = time.perf_counter()
    rounds = []
    if variant in ON_POLICY:
        per_round = max(1, args.epochs // (args.rounds + 1))
        rounds = hd.onpolicy(*overrides, f"onpolicy.rounds={args.rounds}", f"onpolicy.epochs_per_round={per_round}",
                             f"trainer.max_epochs={args.epochs - args.rounds * per_round}",
                             f"onpolicy.device={args.device}", "onpolicy.progress=false", output_dir=run_dir)
    else:
        trained = hd.train(*overrides, f"trainer.max_epochs={args.epochs}", output_dir=run_dir)
    calls = added_calls(run_dir)
    calls = {"force": calls["force"] + sum(r.get("teacher_force_calls", 0) for r in rounds),
             "hessian": calls["hessian"] + sum(r.get("teacher_hessians", 0) for r in rounds)}
    wall = time.perf_counter() - began
    return {"student": student, "variant": variant, "kd": kd, "seed": seed, "run_dir": str(run_dir),
            "epochs": epochs_trained(run_dir) if rounds else trained["epochs"], "wall_s": wall,
            "added_teacher_calls": calls,
            "val": evaluate(str(run_dir), "val", args, md=False),
            "test": evaluate(str(run_dir), "test", args, md=args.md_count > 0)}


SPEED = "speed.json"


def measure_speed(args, student: str, run_dir: str, out: Path) -> dict:
    """Speed of a trained ``student`` against the teacher on its test structures (``hessdistill-evaluate``'s speed
    section: structures/s at batch 64 and at the best batch), once per student: ``<out>/<student>/speed.json``."""
    path = out / student / SPEED
    if not path.exists():
        result = hd.evaluate(run=run_dir, split="test", device=args.device,
                             output_dir=Path(run_dir) / "evaluate-speed",
                             **{"speed.enabled": True, "relax.enabled": False, "spectra.enabled": False,
                                "md.enabled": False})
        path.write_text(json.dumps(result["speed"], indent=1))
    return json.loads(path.read_text())


def epochs_trained(run_dir: Path) -> int:
    """Epochs the run's final student trained, all on-policy rounds included (its saved config's max_epochs)."""
    return int(OmegaConf.load(run_dir / RUN_CONFIG).trainer.max_epochs)


def added_calls(run_dir: Path) -> dict:
    """Teacher calls spent on the augmentation store a run trained with (0 without one)."""
    cfg = OmegaConf.load(run_dir / RUN_CONFIG)
    if cfg.augment.generator is None:
        return {"force": 0, "hessian": 0}
    path = cfg.augment.store or augment_store_path(cfg.subset.store, cfg.augment.name, cfg.teacher.name)
    with HessianStore(path) as store:
        return {"force": int(store.attributes["teacher_force_calls"]), "hessian": len(store)}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.4g}" + (f" ± {np.std(values, ddof=1):.2g}" if len(values) > 1 else "")


def chosen_runs(grid: list[dict]) -> tuple[float | None, list[dict]]:
    """The λ_KD of a variant's runs with the lowest mean validation force MAE over seeds, and its runs."""
    kds = sorted({r["kd"] for r in grid}, key=lambda k: -1 if k is None else k)
    best = min(kds, key=lambda k: np.mean([r["val"]["accuracy"]["force_mae"] for r in grid if r["kd"] == k]))
    return best, [r for r in grid if r["kd"] == best]


def gate(force_mae: float, teacher_mae: float, undistilled_mae: float | None, speed: dict | None) -> str:
    """The gate's columns: ratio to the teacher's force MAE, change against undistilled, speed against the teacher."""
    change = "–" if undistilled_mae is None else f"{100 * (force_mae / undistilled_mae - 1):+.0f} %"
    faster = "–" if speed is None else f"{speed['speedup_at_batch']:.2g}×"
    ratio = f"{force_mae / teacher_mae:.2f}" if teacher_mae > 0 else "–"  # 0: the reference labels are the teacher's
    return f"{ratio} | {change} | {faster}"


def table(runs: list[dict], speeds: dict[str, dict] | None = None) -> str:
    """The README table: per student and variant, the λ_KD chosen on validation and its runs' test metrics, with
    the gate (ratio to the teacher, change against undistilled, speed; ``speeds``: student → its speed.json)."""
    speeds = speeds or {}
    lines = ["| student | variant | λ_KD (val) | seeds | test force MAE meV/Å | ratio to teacher | vs undistilled | "
             "speed vs teacher | test energy MAE meV/atom | Hessian-row MAE eV/Å² | NVT stable | epochs | wall s/run "
             "| added teacher force calls / Hessians |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if runs:  # every run scores the same teacher on the same test split
        teacher = runs[0]["test"]["accuracy"]
        lines.append(f"| teacher | — | — | — | {teacher['teacher_force_mae']:.4g} | 1 | — | 1× | "
                     f"{teacher['teacher_energy_mae']:.4g} | 0 | — | — | — | — |")
    for student in dict.fromkeys(r["student"] for r in runs):
        mine = [r for r in runs if r["student"] == student]
        baseline = [r for r in mine if r["variant"] == "undistilled"]
        undistilled = np.mean([r["test"]["accuracy"]["force_mae"] for r in baseline]) if baseline else None
        for variant in dict.fromkeys(r["variant"] for r in mine):
            best, chosen = chosen_runs([r for r in mine if r["variant"] == variant])
            acc = [r["test"]["accuracy"] for r in chosen]
            md = [r["test"].get("md", {}).get("student") for r in chosen]
            stable = sum(m["stable_runs"] for m in md if m), sum(m["nvt_runs"] for m in md if m)
            calls = chosen[0]["added_teacher_calls"]
            columns = gate(float(np.mean([a["force_mae"] for a in acc])), acc[0]["teacher_force_mae"],
                           None if variant == "undistilled" else undistilled, speeds.get(student))
            lines.append(f"| {student} | {variant} | {'–' if best is None else f'{best:g}'} | {len(chosen)} | "
                         f"{mean_std([a['force_mae'] for a in acc])} | {columns} | "
                         f"{mean_std([a['energy_mae'] for a in acc])} | "
                         f"{mean_std([a.get('hessian_mae') for a in acc])} | {stable[0]}/{stable[1]} | "
                         f"{'/'.join(str(e) for e in sorted({r['epochs'] for r in chosen}))} | "
                         f"{mean_std([r['wall_s'] for r in chosen])} | {calls['force']} / {calls['hessian']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for student in [] if args.table else args.students:
        for variant in args.variants:
            for kd in ([None] if variant == "undistilled" else args.lambdas):
                for seed in args.seeds:
                    done = run_path(out, student, variant, kd, seed) / RESULT
                    if not done.exists():
                        result = train_one(args, student, variant, kd, seed, out)
                        done.write_text(json.dumps(result, indent=1))
    order = {v: i for i, v in enumerate(VARIANTS)}
    runs = sorted((json.loads(f.read_text()) for f in out.glob(f"*/*/*/{RESULT}")),
                  key=lambda r: (r["student"], order[r["variant"]], r["kd"] or 0, r["seed"]))
    speeds = {}
    for student in dict.fromkeys(r["student"] for r in runs):
        if args.table:
            if (out / student / SPEED).exists():
                speeds[student] = json.loads((out / student / SPEED).read_text())
        else:
            speeds[student] = measure_speed(args, student, next(r["run_dir"] for r in runs
                                                                  if r["student"] == student), out)
    (out / "results.json").write_text(json.dumps(runs, indent=1))
    (out / "results.md").write_text(table(runs, speeds) + "\n")
    print(table(runs, speeds))


if __name__ == "__main__":
    main()
