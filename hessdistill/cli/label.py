"""``hessdistill-label``: make reference data — sample conformers by teacher Langevin MD (or take given
structures) and label them with pyscf DFT or GFN2-xTB (tblite), in parallel processes.

Resumable: every labelled frame is appended to the output extxyz at once, with info keys molecule/seed/frame;
rerunning the same command labels only what is missing. ``store=`` also writes a hessdistill store once all
frames are labelled.

    # the embedded demo data set (ωB97X/6-31G(d))
    hessdistill-label molecules=[CH3CONH2,HCOOH,CH3COOH,CH3OH,CH3CH2OH,C2H6CHOH] seeds=[1,2,3] snapshots=10 \\
        out=hessdistill/datasets/demo/hcno_wb97x_631gd.extxyz workers=2
    # GFN2-xTB labels for structures you already have, straight into a store
    hessdistill-label structures=confs.xyz method=xtb out=confs_gfn2.extxyz store=stores/confs.h5

The flags of earlier versions still work as aliases (``--molecules CH3SH CH3Cl --seeds 1 2 --out x.extxyz``).
"""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hessdistill.config import CONFIG_DIR

METHODS = ("pyscf", "xtb")
LIST_KEYS = ("molecules", "seeds")  # keys whose flag took several values
RENAMED = {"teacher": "md_teacher", "teacher_info": "md_teacher_info"}  # flag → key (teacher= is a config group)
PLAIN = re.compile(r"[\w.+\-/:*@]+")  # an override value Hydra reads as it is written (no quotes needed)


def _value(text: str) -> str:
    """``text`` as an override value: as written when Hydra reads it so, else single-quoted."""
    if PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides_from_flags(argv: list[str]) -> list[str]:
    """The command line with the earlier ``--flag value …`` form rewritten as ``key=value`` overrides (``--xtb-method
    GFN1-xTB`` → ``xtb_method=GFN1-xTB``, ``--seeds 1 2`` → ``seeds=[1,2]``); other arguments pass unchanged."""
    out, k = [], 0
    while k < len(argv):
        flag = argv[k]
        if not flag.startswith("--") or flag.startswith("--hydra") or "=" in flag or flag in ("--help", "--debug"):
            out.append(flag)
            k += 1
            continue
        key = flag[2:].replace("-", "_")
        key = RENAMED.get(key, key)
        values = []
        k += 1
        while k < len(argv) and not argv[k].startswith("--") and "=" not in argv[k]:
            values.append(argv[k])
            k += 1
        if key in LIST_KEYS:
            out.append(f"{key}=[{','.join(_value(v) for v in values)}]")
        elif len(values) == 1:
            out.append(f"{key}={_value(values[0])}")
        else:
            raise ValueError(f"--{flag[2:]} takes one value, got {len(values)}: write {key}=<value>")
    return out


def reference(method: str, atoms, options: dict):
    """Energy (eV) and forces (N, 3) eV/Å of ``atoms`` by the reference ``method`` and the info keys naming it."""
    if method == "pyscf":
        from hessdistill.labelling.pyscf_dft import dft_energy_forces

        return dft_energy_forces(atoms, xc=options["xc"], basis=options["basis"]), \
            {"xc": options["xc"], "basis": options["basis"]}
    if method == "xtb":
        from hessdistill.labelling.xtb import xtb_energy_forces

        return xtb_energy_forces(atoms, method=options["xtb_method"]), {"method": options["xtb_method"]}
    raise ValueError(f"method={method!r} is not a reference method; choose one of {', '.join(METHODS)}")


def _label(job):
    from ase.calculators.singlepoint import SinglePointCalculator

    (name, seed, frame), atoms, method, options = job
    start = time.time()
    (energy, forces), level = reference(method, atoms, options)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.update(molecule=name, seed=seed, frame=frame, **level)
    return atoms, time.time() - start


def md_jobs(cfg: DictConfig, done: set):
    """(key, atoms) to label, lazily: each trajectory's MD runs while earlier snapshots are being labelled."""
    from ase.build import molecule

    from hessdistill.integrations.ase_calculator import TorchCalculator
    from hessdistill.labelling.md_sampling import langevin_snapshots
    from hessdistill.teachers.ani import ANITeacher

    calc = TorchCalculator(ANITeacher(cfg.md_teacher, cfg.md_teacher_info), device=cfg.device)
    for name in cfg.molecules:
        for seed in cfg.seeds:
            missing = [f for f in range(cfg.snapshots) if (name, seed, f) not in done]
            if missing:
                snaps = langevin_snapshots(molecule(name), calc, cfg.snapshots, seed, cfg.temperature,
                                           cfg.timestep, cfg.friction, cfg.equilibrate, cfg.interval)
                yield from (((name, seed, f), snaps[f]) for f in missing)


def given_frames(path: str) -> list:
    """Frames of a structure file with their labelling keys (molecule: info 'molecule' or the file stem; seed 0;
    frame: the index in the file)."""
    from hessdistill.data.sources.ase_files import read_frames

    out = []
    for k, atoms in read_frames(path):
        atoms = atoms.copy()  # drops any attached calculator and its labels
        out.append(((str(atoms.info.get("molecule", Path(path).stem)), 0, k), atoms))
    return out


def run(cfg: DictConfig) -> dict:
    """Label what ``cfg`` asks for (conf/label.yaml); returns the frames labelled now and in all."""
    from hessdistill.labelling.append_log import read_complete

    if (cfg.molecules is None) == (cfg.structures is None):
        raise ValueError("hessdistill-label needs molecules=[<g2 names>] (sampled by teacher MD) or "
                         "structures=<file> (labelled as they are), one of the two")
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r} is not a reference method; choose one of {', '.join(METHODS)}")
    out = str(cfg.out)
    options = {"xc": cfg.xc, "basis": cfg.basis, "xtb_method": cfg.xtb_method}
    done = {(a.info["molecule"], int(a.info["seed"]), int(a.info["frame"])) for a in read_complete(out)}
    if cfg.molecules is not None:
        keys = [(n, s, k) for n in cfg.molecules for s in cfg.seeds for k in range(cfg.snapshots)]
        pending = md_jobs(cfg, done)
    else:
        frames = given_frames(cfg.structures)
        keys = [key for key, _ in frames]
        pending = ((key, atoms) for key, atoms in frames if key not in done)
    todo = sum(key not in done for key in keys)
    print(f"{len(done)} frames already labelled, {todo} to go -> {out}", flush=True)
    jobs = ((key, atoms, cfg.method, options) for key, atoms in pending)
    if cfg.workers == 1:
        _append_all(out, map(_label, jobs), todo)
    else:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            _append_all(out, pool.imap_unordered(_label, jobs), todo)
    if cfg.store:
        from hessdistill.data.store import write_structures
        from hessdistill.data.structures import Structure

        labelled = {(a.info["molecule"], int(a.info["seed"]), int(a.info["frame"])): a for a in read_complete(out)}
        structures = [Structure.from_atoms(labelled[key], source=f"{out}[{key}]") for key in keys]
        write_structures(cfg.store, structures)
        print(f"wrote {len(structures)} structures to {cfg.store}", flush=True)
    return {"labelled": todo, "frames": len(keys), "out": out}


def _append_all(out: str, results, total: int) -> None:
    """Append each labelled frame as soon as it arrives (single writer: the parent process)."""
    from hessdistill.labelling.append_log import append_frame

    for k, (atoms, seconds) in enumerate(results, 1):
        append_frame(out, atoms)
        info = atoms.info
        print(f"[{k}/{total}] {info['molecule']} seed {info['seed']} frame {info['frame']}: {seconds:.1f} s",
              flush=True)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="label")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("label")
