"""``hessdistill-evaluate``: one command for a trained student and its teacher on the same split.

    hessdistill-evaluate run=outputs/demo_hcno/painn_small-hessian/<time>   # that run's teacher, subset, split, ckpt
    hessdistill-evaluate run=<dir> teacher=mace teacher.model=<file>   # a teacher that loads a model file: yours
    hessdistill-evaluate run=<dir> md.enabled=true relax.enabled=true spectra.enabled=true   # every section
    hessdistill-evaluate checkpoint=<run dir>/checkpoints/best.ckpt

Writes into the training run's folder, ``<run>/evaluation/<split>/`` (another checkpoint than its last.ckpt:
``<split>-<checkpoint name>/``; outputs/evaluate/<time>/ for a checkpoint outside a run folder): ``metrics.json``
(everything), ``metrics.csv`` and ``metrics.md`` (the tables), ``parity.png`` (energy and force parity, student and
teacher), ``md.png`` and ``spectra.png``. Sections, by default only the fast ones: accuracy on the split (energy
meV/atom, force meV/Å, Hessian-row eV/Å²; seconds) and speed (structures/s and ns/day at batch 64 and at the
throughput-maximising batch, student vs teacher; well under a minute). Opt-in (``<section>.enabled=true``, minutes
each): FIRE relaxation judged by the teacher, NVT stability and NVE drift (ASE, one run per structure, or
``md.engine=torch_sim``: replicas in one batch, plus MD throughput in ns/day per trajectory), and harmonic spectra.

A run folder and a checkpoint are data (``evaluation.run_folder``, ``evaluation.checkpoint``): their teacher and
student are rebuilt through hessdistill's registry, and a teacher that would load code from a file the run names (a
MACE ``.model``, a CHGNet file, an ASE calculator class) is built only from your own ``teacher=…`` config.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from hessdistill.config import CONFIG_DIR
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.labels import StoredLabels, check_reference
from hessdistill.data.splits import SPLITS
from hessdistill.data.store import HessianStore
from hessdistill.devices import resolve_device
from hessdistill.evaluation.accuracy import evaluate_split
from hessdistill.evaluation.checkpoint import checkpoint_weights, load_student
from hessdistill.evaluation.md import md_report
from hessdistill.evaluation.plots import md_plot, parity_plot, spectrum_plot
from hessdistill.evaluation.relax import relaxation_report, spectra_report
from hessdistill.evaluation.run_folder import RunTeacher, training_run
from hessdistill.evaluation.speed import speed_report
from hessdistill.metrics import metric_label
from hessdistill.tables import markdown_table
from hessdistill.teachers import instantiate_teacher

log = logging.getLogger(__name__)


# metrics.md's column headers: the metric set's names with their units (hessdistill.metrics.metric_label), then the
# other sections' keys; a key ending in a unit suffix (``_eV``, ``_ps``, ``_cm1`` …) is shown with that unit
HEADERS = {"structures": "structures", "hessian_rows_per_structure": "Hessian rows per structure",
           "model": "model", "name": "structure", "structure": "#",
           "batch": "batch", "structures_per_s": "structures/s", "ns_per_day": "ns/day (1 fs steps)",
           "best_batch": "best batch", "best_structures_per_s": "structures/s at best batch",
           "best_ns_per_day": "ns/day at best batch", "nvt_runs": "NVT runs", "stable_runs": "stable runs",
           "per_trajectory_ns_per_day": "ns/day per trajectory", "total_ns_per_day": "ns/day in total",
           "best_replicas": "best replicas", "best_per_trajectory_ns_per_day": "ns/day per trajectory at best",
           "best_total_ns_per_day": "ns/day in total at best", "single_trajectory_ns_per_day": "ns/day, 1 trajectory",
           "mae_cm1": "wavenumber MAE (cm⁻¹)"}
UNIT_SUFFIXES = (("_eV_per_atom_per_ps", "eV/atom/ps"), ("_eV_per_A", "eV/Å"), ("_eV", "eV"), ("_ps", "ps"),
                 ("_cm1", "cm⁻¹"))
MISSING = "—"  # a value a section does not have (no failure, no drift)


def column_header(key: str) -> str:
    """The header of column ``key`` in metrics.md, with its unit (counts and names have none)."""
    if (label := metric_label(key)) != key:
        return label
    if key in HEADERS:
        return HEADERS[key]
    for suffix, unit in UNIT_SUFFIXES:
        if key.endswith(suffix):
            return f"{key.removesuffix(suffix).replace('_', ' ')} ({unit})"
    return key.replace("_", " ")


def records_table(rows: list[dict]) -> str:
    """``rows`` (dicts of the same keys) as a Markdown table: headers with units (``column_header``), floats to 6
    significant digits, None as ``—``."""
    keys = list(rows[0])
    cells = [[MISSING if row[k] is None else f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
              for k in keys] for row in rows]
    return markdown_table([column_header(k) for k in keys], cells)


def with_training_run(cfg: DictConfig) -> tuple[DictConfig, RunTeacher | None]:
    """``cfg`` with the subset, split file and checkpoint of the training run ``cfg.run`` (a run directory: the
    checkpoint its test metrics are of, ``test_ckpt``), where ``cfg`` does not name its own checkpoint or split file,
    and the run's teacher, read as data (``evaluation.run_folder``): None when there is no run, or when its teacher
    loads code and ``cfg.teacher`` (the user's own config, of the same kind) builds it instead."""
    if cfg.run is None:
        if cfg.checkpoint is None:
            raise ValueError("hessdistill-evaluate needs checkpoint=<file> or run=<training run directory>")
        return cfg, None
    trained = training_run(Path(cfg.run), cfg.teacher.get("_target_"))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.subset = trained.subset
        cfg.reference = trained.reference
        cfg.split_file = cfg.split_file or str(trained.split_file)
        cfg.checkpoint = cfg.checkpoint or str(trained.checkpoint)
    return cfg, trained.teacher


def planned_sections(cfg: DictConfig) -> str:
    """What an evaluation with ``cfg`` runs and roughly what each section costs, and what it leaves out."""
    cost = {"speed": f"{cfg.speed.structures} structures up to batch {cfg.speed.max_batch}, student and teacher: "
                     f"well under a minute",
            "relax": f"{cfg.relax.count} FIRE relaxations per model: about a minute",
            "md": f"{cfg.md.count} structures × {cfg.md.steps} NVT + {cfg.md.nve_steps} NVE steps per model "
                  f"({cfg.md.engine}): minutes",
            "spectra": f"{cfg.spectra.count} relaxations and Hessians per model: minutes"}
    on = [f"{name} ({what})" for name, what in cost.items() if cfg[name].enabled]
    off = [name for name in cost if not cfg[name].enabled]
    return (f"evaluating {cfg.checkpoint} on the {cfg.split} split: accuracy (seconds)"
            + "".join(f", {section}" for section in on)
            + (f"; not run: {', '.join(off)} (each switched on by <section>.enabled=true, minutes)" if off else ""))


def run(cfg: DictConfig, output_dir: str) -> dict:
    cfg, run_teacher = with_training_run(cfg)
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r} is not a split name; choose one of {', '.join(SPLITS)}")
    log.info("%s → %s", planned_sections(cfg), output_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    student = load_student(cfg.checkpoint, device, allow_unseen_elements=cfg.allow_unseen_elements)
    # the run folder's teacher from its record; the user's own config otherwise (code they vouch for)
    teacher = (run_teacher.build() if run_teacher is not None else instantiate_teacher(cfg.teacher)).to(device)
    as_reference = cfg.reference == "teacher"  # the student is judged against the teacher's energies and forces
    with HessianStore(cfg.subset.store) as store:
        check_reference(cfg.reference, store)
        labelled = store.is_complete(teacher.name)
        if as_reference:
            store.require_complete(teacher.name, f"hessdistill-precompute teacher={teacher.name} "
                                                 f"subset={cfg.subset.name} reference=teacher")
    if not labelled:
        log.warning("%s has no complete labels from teacher %s: no teacher accuracy or Hessian-row MAE",
                    cfg.subset.store, teacher.name)
    labels = StoredLabels(teacher.name, as_reference=as_reference) if labelled else None
    dm = StoreDataModule(store=cfg.subset.store, labels=labels,
                         split=tuple(cfg.subset.split), split_seed=cfg.subset.split_seed,
                         split_by=cfg.subset.get("split_by"), split_file=cfg.split_file or cfg.subset.get("split_file"),
                         cutoff=student.cutoff, max_neighbors=student.max_neighbors, eval_rows=cfg.rows,
                         dtype=str(next(student.parameters()).dtype).removeprefix("torch."))
    indices = dm.splits[cfg.split]
    if len(indices) == 0:
        raise ValueError(f"split {cfg.split!r} of {cfg.subset.store} is empty")
    weights = checkpoint_weights(cfg.checkpoint)
    accuracy = evaluate_split(student, dm.dataset(cfg.split), cfg.batch_size, weights.get("energy", 1.0),
                              weights.get("forces", 1.0))
    result = {"checkpoint": str(cfg.checkpoint), "store": str(cfg.subset.store), "split": cfg.split,
              "teacher": teacher.name, "reference": cfg.reference, "accuracy": accuracy["metrics"]}
    parity_plot(out / "parity.png", accuracy["arrays"], accuracy["metrics"],
                f"{cfg.subset.name} {cfg.split} split ({len(indices)} structures)")
    structures = [dm.store.structure(int(i)) for i in indices]
    if cfg.speed.enabled:
        sample = structures[: cfg.speed.structures]
        s = speed_report(student, sample, cfg.speed.batch_size, cfg.speed.max_batch, cfg.speed.repeat)
        t = speed_report(teacher, sample, cfg.speed.batch_size, cfg.speed.max_batch, cfg.speed.repeat)
        result["speed"] = {"student": s, "teacher": t,
                           "speedup_at_batch": s["structures_per_s"] / t["structures_per_s"],
                           "speedup_at_best_batch": s["best_structures_per_s"] / t["best_structures_per_s"]}
    if cfg.relax.enabled:
        reference = hydra.utils.instantiate(cfg.relax.reference) if cfg.relax.get("reference") else None
        result["relax"] = relaxation_report(structures[: cfg.relax.count], student, teacher, cfg.relax.fmax,
                                            cfg.relax.steps, reference)
        result["relax_judged_by"] = cfg.relax.reference._target_ if reference is not None else f"teacher {teacher.name}"
    if cfg.md.enabled:
        training = [dm.store.structure(int(i)).to_atoms() for i in dm.splits["train"]]
        starts = [s.to_atoms() for s in structures[: cfg.md.count]]
        models = {"student": student, "teacher": teacher}
        if cfg.md.engine == "ase":
            md = md_report(starts, models, training, cfg.md.steps, cfg.md.nve_steps, cfg.md.temperature_K,
                           cfg.md.timestep_fs, cfg.md.friction_per_fs, cfg.md.max_deviation)
        elif cfg.md.engine == "torch_sim":
            md, result["md_speed"] = batched_md_sections(cfg.md, starts, models, training)
        else:
            raise ValueError(f"md.engine must be ase or torch_sim, got {cfg.md.engine!r}")
        md_plot(out / "md.png", md, cfg.md.max_deviation)
        result["md"] = md
        result["md_summary"] = md_summary(md)
    if cfg.spectra.enabled:
        spectra = spectra_report(structures[: cfg.spectra.count], student, teacher, cfg.spectra.fmax,
                                 cfg.spectra.steps)
        spectrum_plot(out / "spectra.png", spectra, "harmonic wavenumbers at each model's minimum")
        result["spectra"] = [{"name": s["name"], "mae_cm1": s["mae_cm1"], "student_cm1": s["student_cm1"].tolist(),
                              "teacher_cm1": s["teacher_cm1"].tolist()} for s in spectra]
        result["spectra_mae_cm1"] = float(np.mean([s["mae_cm1"] for s in spectra]))
    write_outputs(out, result)
    return result


def batched_md_sections(md_cfg: DictConfig, starts: list, models: dict, training: list) -> tuple[dict, dict]:
    """MD by torch-sim: the MD report (``md.replicas`` runs per structure) and MD throughput on the first structure,
    student vs teacher (ns/day per trajectory at ``md.batch`` replicas and at the best replica count)."""
    try:
        from hessdistill.evaluation import batched_md
    except ImportError as exc:
        raise ModuleNotFoundError(f"md.engine=torch_sim needs torch-sim ({exc}): pip install 'hessdistill[md]'") \
            from None
    md = batched_md.md_report(starts, models, training, md_cfg.steps, md_cfg.nve_steps, md_cfg.replicas,
                              md_cfg.temperature_K, md_cfg.timestep_fs, md_cfg.friction_per_fs, md_cfg.max_deviation)
    speed = {name: batched_md.md_throughput(starts[0], model, md_cfg.batch, md_cfg.max_replicas,
                                            md_cfg.throughput_steps, md_cfg.timestep_fs)
             for name, model in models.items()}
    for key in ("per_trajectory_ns_per_day", "best_per_trajectory_ns_per_day", "best_total_ns_per_day"):
        speed[f"speedup_{key}"] = speed["student"][key] / speed["teacher"][key]
    return md, speed


def md_summary(md: dict) -> list[dict]:
    """Per model: stable runs, mean time to failure (ps, failed runs only) and mean NVE drift (eV/atom/ps)."""
    rows = []
    for name, runs in md.items():
        failures = [r["time_to_failure_ps"] for r in runs["nvt"] if r["time_to_failure_ps"] is not None]
        drifts = [r["drift_eV_per_atom_per_ps"] for r in runs["nve"]]
        rows.append({"model": name, "nvt_runs": len(runs["nvt"]), "stable_runs": len(runs["nvt"]) - len(failures),
                     "simulated_ps": float(np.mean([r["simulated_ps"] for r in runs["nvt"]])),
                     "mean_time_to_failure_ps": float(np.mean(failures)) if failures else None,
                     "nve_drift_eV_per_atom_per_ps": float(np.mean(drifts)) if drifts else None})
    return rows


def write_outputs(out: Path, result: dict) -> None:
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    flat = {f"accuracy/{k}": v for k, v in result["accuracy"].items()}
    if "speed" in result:
        for who in ("student", "teacher"):
            flat.update({f"speed/{who}/{k}": v for k, v in result["speed"][who].items()})
        flat["speed/speedup_at_batch"] = result["speed"]["speedup_at_batch"]
        flat["speed/speedup_at_best_batch"] = result["speed"]["speedup_at_best_batch"]
    if "spectra_mae_cm1" in result:
        flat["spectra/mae_cm1"] = result["spectra_mae_cm1"]
    for who in ("student", "teacher"):
        flat.update({f"md_speed/{who}/{k}": v for k, v in result.get("md_speed", {}).get(who, {}).items()})
    for row in result.get("md_summary", []):
        flat.update({f"md/{row['model']}/{k}": v for k, v in row.items() if k != "model"})
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value"])
        writer.writerows(flat.items())
    reference = f"the teacher {result['teacher']}" if result.get("reference") == "teacher" else "the reference (DFT)"
    sections = [f"# Evaluation of {result['checkpoint']}\n", f"{result['store']}, {result['split']} split, teacher "
                f"{result['teacher']}\n", f"## Accuracy against {reference}\n", records_table([result["accuracy"]])]
    if "speed" in result:
        rows = [{"model": who, **result["speed"][who]} for who in ("student", "teacher")]
        sections += ["\n## Speed\n", records_table(rows),
                     f"\nstudent/teacher: {result['speed']['speedup_at_batch']:.2f}x at batch "
                     f"{result['speed']['student']['batch']}, {result['speed']['speedup_at_best_batch']:.2f}x at "
                     f"the best batches"]
    if "relax" in result:
        sections += [f"\n## FIRE relaxation (judged by {result['relax_judged_by']})\n", records_table(result["relax"])]
    if "md_summary" in result:
        sections += ["\n## MD: NVT stability and NVE drift\n", records_table(result["md_summary"])]
    if "md_speed" in result:
        speed = result["md_speed"]
        sections += ["\n## MD throughput (torch-sim, replicas of one structure)\n",
                     records_table([{"model": who, **speed[who]} for who in ("student", "teacher")]),
                     f"\nstudent/teacher per trajectory: {speed['speedup_per_trajectory_ns_per_day']:.2f}x at "
                     f"{speed['student']['batch']} replicas, {speed['speedup_best_per_trajectory_ns_per_day']:.2f}x at "
                     f"the best replica counts ({speed['speedup_best_total_ns_per_day']:.2f}x in total)"]
    if "spectra" in result:
        sections += ["\n## Harmonic spectra\n", records_table([{"name": s["name"], "mae_cm1": s["mae_cm1"]}
                                                                for s in result["spectra"]])]
    (out / "metrics.md").write_text("\n".join(sections) + "\n")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    result = run(cfg, HydraConfig.get().runtime.output_dir)
    log.info("evaluation written: %s", json.dumps(result["accuracy"]))


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("evaluate")
