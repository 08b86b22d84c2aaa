"""On-policy rounds (``hessdistill-onpolicy``, ``hd.onpolicy``): train → the student's own MD from training
structures → the visited configurations where it is least to be trusted → labelled by the teacher → added to
training → train on.

Round 0 trains ``trainer.max_epochs`` epochs with the run's config (augment, row sampling, … all apply). Round k ≥ 1:

1. Langevin NVT (ASE, fixcm=False) of the last checkpoint's student from ``starts`` training structures (drawn per
   round; null: all of them), ``md.steps`` steps at ``md.temperature_K``, a snapshot every ``md.interval`` steps; a
   trajectory ends at the first snapshot with a bond stretched by more than ``md.max_bond_deviation`` Å from the
   start (a broken molecule; dropped).
2. Each snapshot's score, eV/Å: ``score: teacher``, the largest atom force error ‖F_student − F_teacher‖;
   ``score: committee``, the largest atom force spread sqrt(mean_m ‖F_m − F̄‖²) over the student and the
   ``committee`` checkpoints (e.g. other seeds' runs).
3. The ``select`` highest-scoring snapshots, labelled by the teacher (energy, forces, Hessian), become
   ``<run dir>/rounds/round-<k>.h5`` (origin on_policy), which joins the training split (``data.added``).
4. ``epochs_per_round`` more epochs from the last checkpoint on the grown training split.

The teacher labels every snapshot's energy and forces (step 2 needs them for ``teacher`` scores; they are cheap next
to Hessians), and Hessians of the selected ones only.

Every round is logged in ``<run dir>/rounds.json``: its store, how many snapshots were visited and selected, their
scores, the teacher calls spent, the epochs trained and the wall times (and test metrics after the last round).
Resumable: run the same command with the same run directory (``hydra.run.dir=<dir>``) after a kill — a round's store
is built resumably (``augment.builder``, the MD seeded by (seed, round, structure)), training resumes from
``checkpoints/last.ckpt``, finished rounds are skipped.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from hessdistill.augment.builder import Candidates, build_added_store, labels_at
from hessdistill.augment.run import LazyTeacher
from hessdistill.cli.train import run as train
from hessdistill.data.added import added_attrs
from hessdistill.data.keys import ON_POLICY
from hessdistill.data.splits import read_split_file
from hessdistill.data.store import HessianStore
from hessdistill.devices import resolve_device
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.evaluation.md import bond_lengths, bonds_of, max_bond_deviation
from hessdistill.hessian.rows import mixed_seed
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.labelling.md_sampling import langevin_snapshots

ROUNDS = "rounds.json"
SCORES = ("teacher", "committee")


def _save(path: Path, rounds: list[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(rounds, indent=1))
    os.replace(partial, path)


def run_rounds(cfg: DictConfig, output_dir: str | Path) -> list[dict]:
    """Run (or resume) the rounds of ``cfg.onpolicy`` in ``output_dir``; returns the rounds' log."""
    opts, out = cfg.onpolicy, Path(output_dir)
    if opts.score not in SCORES:
        raise ValueError(f"onpolicy.score must be one of {SCORES}, got {opts.score!r}")
    if opts.score == "committee" and not opts.committee:
        raise ValueError("onpolicy.score=committee needs checkpoints in onpolicy.committee (e.g. other seeds' "
                         "checkpoints/last.ckpt) to compare the student with")
    out.mkdir(parents=True, exist_ok=True)
    log_path, checkpoint = out / ROUNDS, out / "checkpoints" / "last.ckpt"
    rounds = json.loads(log_path.read_text()) if log_path.exists() else []
    teacher = LazyTeacher(cfg.teacher, opts.device)
    for k in range(opts.rounds + 1):
        if k == len(rounds):
            began = time.perf_counter()
            entry = {"round": k} if k == 0 else sample_round(cfg, k, out, checkpoint, teacher)
            rounds.append({**entry, "sample_seconds": time.perf_counter() - began})
            _save(log_path, rounds)
        if rounds[k].get("trained"):
            continue
        began = time.perf_counter()
        epochs = cfg.trainer.max_epochs + k * opts.epochs_per_round
        stores = [r["store"] for r in rounds[1 : k + 1]]
        result = train(round_config(cfg, epochs, stores, checkpoint, last=k == opts.rounds), str(out))
        rounds[k].update(epochs=epochs, trained=True, train_seconds=time.perf_counter() - began,
                         **({"test": result["test"]} if "test" in result else {}))
        _save(log_path, rounds)
    return rounds


def round_config(cfg: DictConfig, epochs: int, stores: list[str], checkpoint: Path, last: bool) -> DictConfig:
    """The training config of a round: ``epochs`` in all, the rounds' ``stores`` added, resumed from ``checkpoint``
    when it exists, tested after the last round only."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.added_stores = [*cfg.added_stores, *stores]
        cfg.ckpt_path = str(checkpoint) if checkpoint.exists() else cfg.ckpt_path
        cfg.test = bool(cfg.test) and last
    return cfg


def start_structures(train: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """``count`` training structures (sorted) drawn with ``seed``; all of them when count is None or ≥ their
    number."""
    if count is None or count >= len(train):
        return np.asarray(train, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(train, size=count, replace=False)).astype(np.int64)


def force_scores(student_forces: np.ndarray, teacher_forces: np.ndarray) -> np.ndarray:
    """max over atoms of ‖F_student − F_teacher‖ per configuration: forces (C, N, 3) eV/Å → (C,) eV/Å."""
    return np.linalg.norm(student_forces - teacher_forces, axis=-1).max(axis=1, initial=0.0)


def committee_scores(forces: np.ndarray) -> np.ndarray:
    """max over atoms of the spread sqrt(mean_m ‖F_m − F̄‖²) per configuration: forces (M, C, N, 3) eV/Å → (C,)."""
    spread = np.sqrt(((forces - forces.mean(axis=0)) ** 2).sum(-1).mean(axis=0))  # (C, N)
    return spread.max(axis=1, initial=0.0)


def top_scoring(candidates: dict[int, Candidates], count: int) -> list[tuple[int, int]]:
    """The ``count`` (parent, configuration) pairs of highest score, best first (ties: parent order)."""
    keys = [(p, c) for p, made in candidates.items() for c in range(len(made.score))]
    scores = np.array([candidates[p].score[c] for p, c in keys])
    return [keys[i] for i in np.argsort(-scores, kind="stable")[:count]]


def sample_round(cfg: DictConfig, k: int, out: Path, checkpoint: Path, teacher: LazyTeacher) -> dict:
    """Steps 1–3 of round ``k`` with the student of ``checkpoint``: the round's store (built or resumed) and its
    summary for the log."""
    opts, md = cfg.onpolicy, cfg.onpolicy.md
    main = HessianStore(cfg.subset.store)
    fingerprint = main.fingerprint()
    train_split = read_split_file(out / "splits.json", fingerprint, len(main))["train"]
    parents = start_structures(train_split, opts.starts, mixed_seed(cfg.seed, k))
    device = resolve_device(opts.device)
    student = load_student(checkpoint, device)
    committee = [student, *(load_student(c, device) for c in opts.committee)] if opts.score == "committee" else []

    def generate(p: int) -> Candidates:
        parent = main.structure(p)
        atoms = parent.to_atoms()
        bonds = bonds_of(atoms)
        start = bond_lengths(atoms.positions, bonds)
        snaps = langevin_snapshots(atoms, TorchCalculator(student), md.steps // md.interval, mixed_seed(cfg.seed, k, p),
                                   md.temperature_K, md.timestep_fs, md.friction_per_fs, 0, md.interval,
                                   stop=lambda a: max_bond_deviation(a.positions, bonds, start) > md.max_bond_deviation)
        positions = np.stack([s.positions for s in snaps]) if snaps else np.zeros((0, parent.n_atoms, 3))
        energy, forces = labels_at(teacher(), parent, positions)
        if committee:
            score = committee_scores(np.stack([labels_at(m, parent, positions)[1] for m in committee]))
        else:
            score = force_scores(labels_at(student, parent, positions)[1], forces)
        return Candidates(positions, energy, forces, score, np.full(len(positions), ON_POLICY), len(positions))

    md_config = OmegaConf.to_container(md, resolve=True)
    attrs = added_attrs(fingerprint, cfg.teacher.name, parents, origin=ON_POLICY, round=k, md=md_config,
                        score=opts.score, select=opts.select, committee=list(opts.committee),
                        student_epochs=cfg.trainer.max_epochs + (k - 1) * opts.epochs_per_round)
    path = build_added_store(out / "rounds" / f"round-{k}.h5", main, parents, generate, teacher, attrs,
                             select=lambda candidates: top_scoring(candidates, opts.select),
                             batch_size=opts.batch_size, progress=opts.progress)
    main.close()
    return {"round": k, "store": str(path), "starts": len(parents), **store_summary(path)}


def store_summary(path: Path) -> dict:
    """What a round's store holds: snapshots visited and selected, the selected ones' scores (eV/Å) and the teacher
    calls spent (force calls on every snapshot, Hessians of the selected)."""
    with HessianStore(path) as store:
        scores = np.array(store.info_values("score"), dtype=np.float64)
        attrs = store.attributes
        return {"visited": int(attrs["candidates"]), "selected": len(store),
                "score_eV_per_A": {"min": float(scores.min()), "mean": float(scores.mean()),
                                   "max": float(scores.max())} if len(scores) else None,
                "teacher_force_calls": int(attrs["teacher_force_calls"]), "teacher_hessians": len(store)}
