"""``hessdistill-label``: make reference data — sample conformers by teacher Langevin MD (or take given
structures) and label them with pyscf DFT or GFN2-xTB (tblite), in parallel processes.

Resumable: every labelled frame is appended to the output extxyz at once, with info keys molecule/seed/frame;
rerunning the same command labels only what is missing. ``--store`` also writes a hessdistill store once all
frames are labelled.

Examples:
    # the embedded demo data set (ωB97X/6-31G(d))
    hessdistill-label --molecules CH3CONH2 HCOOH CH3COOH CH3OH CH3CH2OH C2H6CHOH --seeds 1 2 3 \\
        --snapshots 10 --out hessdistill/datasets/demo/hcno_wb97x_631gd.extxyz --workers 2
    # GFN2-xTB labels for structures you already have, straight into a store
    hessdistill-label --structures confs.xyz --method xtb --out confs_gfn2.extxyz --store stores/confs.h5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from hessdistill.data.sources.ase_files import read_frames
from hessdistill.data.store import write_structures
from hessdistill.data.structures import Structure
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.labelling.append_log import append_frame, read_complete
from hessdistill.labelling.md_sampling import langevin_snapshots

METHODS = ("pyscf", "xtb")


def reference(method: str, atoms, options: dict):
    """Energy (eV) and forces (N, 3) eV/Å of ``atoms`` by the reference ``method`` and the info keys naming it."""
    if method == "pyscf":
        from hessdistill.labelling.pyscf_dft import dft_energy_forces

        return dft_energy_forces(atoms, xc=options["xc"], basis=options["basis"]), \
            {"xc": options["xc"], "basis": options["basis"]}
    if method == "xtb":
        from hessdistill.labelling.xtb import xtb_energy_forces

        return xtb_energy_forces(atoms, method=options["xtb_method"]), {"method": options["xtb_method"]}
    raise ValueError(f"unknown reference method {method!r}; choose one of {METHODS}")


def _label(job):
    (name, seed, frame), atoms, method, options = job
    start = time.time()
    (energy, forces), level = reference(method, atoms, options)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.update(molecule=name, seed=seed, frame=frame, **level)
    return atoms, time.time() - start


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--molecules", nargs="+", help="ASE g2 molecule names, sampled by teacher MD")
    what.add_argument("--structures", help="an ASE-readable file of structures to label as they are")
    p.add_argument("--seeds", nargs="+", type=int, default=[1], help="one MD trajectory per molecule and seed")
    p.add_argument("--snapshots", type=int, default=10, help="snapshots per trajectory")
    p.add_argument("--teacher", default="ani1x", help="ANI model name for the MD (ani1x, ani1ccx, ani2x)")
    p.add_argument("--device", default="auto", help="where the teacher MD runs: auto, cpu, cuda, cuda:<i>")
    p.add_argument("--teacher-info", default=None,
                   help="NeuroChem .info file (ANI-2x: torchani_resources/ani-2x_8x.info)")
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=0.01, help="1/fs")
    p.add_argument("--equilibrate", type=int, default=500, help="MD steps before the first snapshot")
    p.add_argument("--interval", type=int, default=40, help="MD steps between snapshots")
    p.add_argument("--method", choices=METHODS, default="pyscf", help="reference: pyscf DFT or GFN-xTB (tblite)")
    p.add_argument("--xc", default="wb97x", help="pyscf functional")
    p.add_argument("--basis", default="6-31g*", help="pyscf basis set")
    p.add_argument("--xtb-method", default="GFN2-xTB", help="tblite method (GFN2-xTB, GFN1-xTB)")
    p.add_argument("--workers", type=int, default=1, help="parallel labelling processes")
    p.add_argument("--out", required=True, help="extxyz file, appended to")
    p.add_argument("--store", default=None, help="also write a hessdistill store here when every frame is labelled")
    return p.parse_args(argv)


def md_jobs(args, done: set):
    """(key, atoms) to label, lazily: each trajectory's MD runs while earlier snapshots are being labelled."""
    from hessdistill.teachers.ani import ANITeacher

    calc = TorchCalculator(ANITeacher(args.teacher, args.teacher_info), device=args.device)
    for name in args.molecules:
        for seed in args.seeds:
            missing = [f for f in range(args.snapshots) if (name, seed, f) not in done]
            if missing:
                snaps = langevin_snapshots(molecule(name), calc, args.snapshots, seed, args.temperature,
                                           args.timestep, args.friction, args.equilibrate, args.interval)
                yield from (((name, seed, f), snaps[f]) for f in missing)


def given_frames(path: str) -> list:
    """Frames of a structure file with their labelling keys (molecule: info 'molecule' or the file stem; seed 0;
    frame: the index in the file)."""
    out = []
    for k, atoms in read_frames(path):
        atoms = atoms.copy()  # drops any attached calculator and its labels
        out.append(((str(atoms.info.get("molecule", Path(path).stem)), 0, k), atoms))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    options = {"xc": args.xc, "basis": args.basis, "xtb_method": args.xtb_method}
    done = {(a.info["molecule"], int(a.info["seed"]), int(a.info["frame"])) for a in read_complete(args.out)}
    if args.molecules:
        keys = [(n, s, k) for n in args.molecules for s in args.seeds for k in range(args.snapshots)]
        pending = md_jobs(args, done)
    else:
        frames = given_frames(args.structures)
        keys = [key for key, _ in frames]
        pending = ((key, atoms) for key, atoms in frames if key not in done)
    todo = sum(key not in done for key in keys)
    print(f"{len(done)} frames already labelled, {todo} to go -> {args.out}", flush=True)
    jobs = ((key, atoms, args.method, options) for key, atoms in pending)
    if args.workers == 1:
        _append_all(args.out, map(_label, jobs), todo)
    else:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            _append_all(args.out, pool.imap_unordered(_label, jobs), todo)
    if args.store:
        labelled = {(a.info["molecule"], int(a.info["seed"]), int(a.info["frame"])): a for a in read_complete(args.out)}
        structures = [Structure.from_atoms(labelled[key], source=f"{args.out}[{key}]") for key in keys]
        write_structures(args.store, structures)
        print(f"wrote {len(structures)} structures to {args.store}", flush=True)


def _append_all(out: str, results, total: int) -> None:
    """Append each labelled frame as soon as it arrives (single writer: the parent process)."""
    for k, (atoms, seconds) in enumerate(results, 1):
        append_frame(out, atoms)
        info = atoms.info
        print(f"[{k}/{total}] {info['molecule']} seed {info['seed']} frame {info['frame']}: {seconds:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
