"""``hessdistill-label``: sample conformers by teacher Langevin MD and label them with pyscf DFT.

Resumable: every labelled frame is appended to the output extxyz at once, with info keys
molecule/seed/frame; rerunning the same command labels only what is missing.

Example (the embedded demo data set):
    hessdistill-label --molecules CH3CONH2 HCOOH CH3COOH CH3OH CH3CH2OH C2H6CHOH --seeds 1 2 3 \
        --snapshots 10 --out data/demo/hcno_wb97x_631gd.extxyz --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from hessdistill.calculator import TorchCalculator
from hessdistill.labelling.append_log import append_frame, read_complete
from hessdistill.labelling.md_sampling import langevin_snapshots
from hessdistill.labelling.pyscf_dft import dft_energy_forces


def _label(job):
    name, seed, frame, atoms, xc, basis = job
    start = time.time()
    energy, forces = dft_energy_forces(atoms, xc=xc, basis=basis)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.update(molecule=name, seed=seed, frame=frame, xc=xc, basis=basis)
    return atoms, time.time() - start


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", nargs="+", required=True, help="ASE g2 molecule names")
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="one MD trajectory per molecule and seed")
    p.add_argument("--snapshots", type=int, default=10, help="snapshots per trajectory")
    p.add_argument("--teacher", default="ani1x", help="ANI model name for the MD (ani1x, ani1ccx, ani2x)")
    p.add_argument("--teacher-info", default=None, help="NeuroChem .info file (ANI-2x: torchani_resources/ani-2x_8x.info)")
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=0.01, help="1/fs")
    p.add_argument("--equilibrate", type=int, default=500, help="MD steps before the first snapshot")
    p.add_argument("--interval", type=int, default=40, help="MD steps between snapshots")
    p.add_argument("--xc", default="wb97x")
    p.add_argument("--basis", default="6-31g*")
    p.add_argument("--workers", type=int, default=1, help="parallel DFT processes")
    p.add_argument("--out", required=True, help="extxyz file, appended to")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from hessdistill.teachers.ani import ANITeacher

    done = {(a.info["molecule"], int(a.info["seed"]), int(a.info["frame"])) for a in read_complete(args.out)}
    calc = TorchCalculator(ANITeacher(args.teacher, args.teacher_info))
    todo = sum(f not in done for f in
               ((n, s, k) for n in args.molecules for s in args.seeds for k in range(args.snapshots)))
    print(f"{len(done)} frames already labelled, {todo} to go -> {args.out}", flush=True)

    def jobs():  # lazily: each trajectory's MD runs while earlier snapshots are being labelled
        for name in args.molecules:
            for seed in args.seeds:
                missing = [f for f in range(args.snapshots) if (name, seed, f) not in done]
                if missing:
                    snaps = langevin_snapshots(molecule(name), calc, args.snapshots, seed, args.temperature,
                                               args.timestep, args.friction, args.equilibrate, args.interval)
                    yield from ((name, seed, f, snaps[f], args.xc, args.basis) for f in missing)

    if args.workers == 1:
        _append_all(args.out, map(_label, jobs()), todo)
    else:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            _append_all(args.out, pool.imap_unordered(_label, jobs()), todo)


def _append_all(out: str, results, total: int) -> None:
    """Append each labelled frame as soon as it arrives (single writer: the parent process)."""
    for k, (atoms, seconds) in enumerate(results, 1):
        append_frame(out, atoms)
        info = atoms.info
        print(f"[{k}/{total}] {info['molecule']} seed {info['seed']} frame {info['frame']}: {seconds:.1f} s", flush=True)

if __name__ == "__main__":
    main()
