"""Dataset scale: the data path from a full-size source file to one training epoch, at 10⁴ … 10⁶ source entries.

We cannot ship SPICE (≈1.1 M conformers, ≈30 GB) or MPtrj (≈1.58 M frames, ≈12 GB), so this writes synthetic files
of their exact layouts, streaming, into a temporary folder: an MPtrj-shaped JSON (mp-id → frame-id → frame with a
pymatgen Structure dict, energies, force, stress, magmom, band gap; ~10 frames per material, 4–56 atoms per cell,
2 % of materials with yttrium; beyond 2000 materials they repeat under new mp-ids) and a SPICE-shaped HDF5 (one
group per molecule, ~50 float32 conformers of 8–60 atoms, energies and gradients, subset and smiles strings; 1 % of
molecules with iodine). For each size it then

  store       builds the paper's subsets from them (``subset=mptrj_yttrium``, and an iodine subset of the SPICE file)
              through ``build_store``: streamed reading, selection, store written in chunks;
  precompute  labels the yttrium store with a cheap teacher (finite differences of ASE's Lennard-Jones, layout
              rows, 4 rows per structure) through ``hessdistill-precompute``'s ``run``;
  train       trains PaiNN-small one epoch with Hessian distillation (batch 8, 4 rows) through ``hessdistill-train``'s
              ``run``, timing the time spent waiting on the loader against the time in the training step;
  loader      the same wait/step timing with 2 DataLoader workers (40 batches).

Every stage runs in its own process; its peak RSS (the process and the workers it reaped), wall time and
throughput are printed per size, then how each grows from the smallest size (memory should stay flat, time grow
linearly). Run one at a time on a quiet machine, with OMP_NUM_THREADS=1:

    OMP_NUM_THREADS=1 python benchmarks/scale.py --sizes 1e4 1e5
    OMP_NUM_THREADS=1 python benchmarks/scale.py --sizes 1e6 --stages store   # the 10⁶-entry source → subset stores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np

STAGES = ("store", "precompute", "train", "loader")
TEACHER = ["teacher=ase_fd", "teacher.calculator._target_=ase.calculators.lj.LennardJones", "teacher.elements=null",
           "teacher.name=lj_fd", "teacher.level_of_theory=LJ", "teacher.delta=1e-4"]
ROWS = 4
ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Zr",
            "Nb", "Mo", "Ru", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "La", "Ce", "Nd", "Hf", "Ta", "W", "Pt", "Au", "Al",
            "Ga", "Si", "Ge", "B", "C", "N", "O", "F", "P", "S", "Cl", "Se", "Br", "Te", "I", "H"]


# ---- synthetic sources, written streaming ----------------------------------------------------------------------
def _grid_cell(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A cell (3, 3) Å holding n atoms on a jittered grid (no two closer than ~2 Å), their positions (n, 3) Å."""
    side = int(np.ceil(n ** (1 / 3)))
    spacing = 2.6
    cell = np.diag([side * spacing] * 3) + rng.normal(scale=0.1, size=(3, 3))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    fractional = (grid + 0.5 + rng.normal(scale=0.04, size=(n, 3))) / side
    return cell, fractional @ cell


def _mptrj_frame(rng, symbols: list[str], mp_id: str, cell: np.ndarray, xyz: np.ndarray) -> dict:
    """One frame in MPtrj's layout (pymatgen Structure dict without pymatgen): the material's cell (3, 3) Å and
    positions (n, 3) Å, displaced a little as along a relaxation trajectory."""
    n = len(symbols)
    cell = cell + rng.normal(scale=0.01, size=(3, 3))
    xyz = xyz + rng.normal(scale=0.02, size=(n, 3))
    abc = xyz @ np.linalg.inv(cell)
    lengths = np.linalg.norm(cell, axis=1)
    magmom = rng.normal(scale=0.5, size=n).round(3).tolist()
    energy = float(-5.0 * n + rng.normal())
    return {
        "structure": {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
                      "lattice": {"matrix": cell.tolist(), "pbc": [True, True, True], "a": lengths[0],
                                  "b": lengths[1], "c": lengths[2], "alpha": 90.0, "beta": 90.0, "gamma": 90.0,
                                  "volume": float(abs(np.linalg.det(cell)))},
                      "properties": {},
                      "sites": [{"species": [{"element": s, "occu": 1}], "abc": f, "xyz": x, "label": s,
                                 "properties": {"magmom": m}}
                                for s, f, x, m in zip(symbols, abc.tolist(), xyz.tolist(), magmom)]},
        "uncorrected_total_energy": energy, "corrected_total_energy": energy - 0.3,
        "energy_per_atom": energy / n, "ef_per_atom": float(rng.normal(-1.0, 0.5)),
        "e_per_atom_relaxed": energy / n - 0.01, "ef_per_atom_relaxed": -1.0,
        "force": rng.normal(scale=0.3, size=(n, 3)).tolist(), "stress": rng.normal(size=(3, 3)).tolist(),
        "magmom": magmom, "bandgap": float(max(0.0, rng.normal(1.0, 1.5))), "mp_id": mp_id,
    }


def _mptrj_material(rng, yttrium: float, max_frames: int) -> tuple[str, int, bool]:
    """A random material's frames (≤ max_frames) as JSON text with the placeholder mp-id "@ID@", how many frames,
    and whether it holds yttrium (with probability ``yttrium``)."""
    n_atoms = int(rng.integers(4, 57))
    species = list(rng.choice(ELEMENTS, size=int(rng.integers(1, 5)), replace=False))
    if rng.random() < yttrium:
        species[0] = "Y"
    symbols = [species[k % len(species)] for k in range(n_atoms)]
    n = min(int(rng.integers(1, 20)), max_frames)
    cell, xyz = _grid_cell(rng, n_atoms)
    frames = {f"@ID@-{k}": _mptrj_frame(rng, symbols, "@ID@", cell, xyz) for k in range(n)}
    return json.dumps(frames), n, "Y" in species


def write_mptrj(path: Path, n_frames: int, seed: int = 0, yttrium: float = 0.02, distinct: int = 2000) -> dict:
    """An MPtrj-shaped JSON of ``n_frames`` frames, one material (1–19 frames of 4–56 atoms) at a time. The first
    ``distinct`` materials are drawn at random, later ones repeat them in turn under new mp-ids: encoding JSON is
    the generator's bottleneck, and the reader's work per frame is the same."""
    rng = np.random.default_rng(seed)
    written = with_y = 0
    pool: list[tuple[str, int, bool]] = []
    with path.open("w") as f:
        f.write("{")
        while written < n_frames:
            if len(pool) < distinct:
                pool.append(_mptrj_material(rng, yttrium, n_frames - written))
                text, n, has_y = pool[-1]
            else:
                text, n, has_y = pool[written % distinct]
                if n > n_frames - written:  # the last material: a fresh one that fits
                    text, n, has_y = _mptrj_material(rng, yttrium, n_frames - written)
            mp_id = f"mp-{written}"
            f.write(("," if written else "") + json.dumps(mp_id) + ":" + text.replace("@ID@", mp_id))
            written += n
            with_y += n * has_y
        f.write("}")
    return {"frames": written, "yttrium_frames": with_y}


def write_spice(path: Path, n_conformers: int, seed: int = 0, iodine: float = 0.01) -> dict:
    """A SPICE-shaped HDF5 of ``n_conformers`` conformers, one molecule group (≤ 50 conformers) at a time."""
    import h5py

    rng = np.random.default_rng(seed)
    written = with_i = 0
    organic = np.array([1, 6, 7, 8, 9, 15, 16, 17, 35])
    weights = np.array([0.5, 0.3, 0.07, 0.08, 0.01, 0.005, 0.015, 0.01, 0.01])
    with h5py.File(path, "w") as f:
        while written < n_conformers:
            n_atoms, n_conf = int(rng.integers(8, 61)), min(50, n_conformers - written)
            z = rng.choice(organic, size=n_atoms, p=weights / weights.sum())
            if rng.random() < iodine:
                z[0] = 53
            g = f.create_group(f"mol-{written}")
            g["atomic_numbers"] = z.astype(np.int16)
            g["conformations"] = (_grid_cell(rng, n_atoms)[1][None] / 0.529177
                                  + rng.normal(scale=0.05, size=(n_conf, n_atoms, 3))).astype(np.float32)  # Bohr
            g["dft_total_energy"] = -40.0 * n_atoms + rng.normal(size=n_conf)  # Hartree
            g["formation_energy"] = rng.normal(size=n_conf)
            g["dft_total_gradient"] = rng.normal(scale=0.02, size=(n_conf, n_atoms, 3)).astype(np.float32)
            g.create_dataset("subset", data=np.array([b"SPICE PubChem Set 1 Single Points Dataset v1.2"],
                                                     dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("smiles", data=np.array([f"[mol-{written}]".encode()], dtype=object),
                             dtype=h5py.string_dtype())
            written += n_conf
            with_i += n_conf * bool((z == 53).any())
    return {"conformers": written, "iodine_conformers": with_i}


# ---- the stages (each in its own process) -------------------------------------------------------------------------
def _subset_overrides(folder: Path, size: int) -> list[str]:
    return ["subset=mptrj_yttrium", f"subset.source.path={folder / f'mptrj-{size}.json'}",
            f"subset.store={folder / f'mptrj_yttrium-{size}.h5'}", "subset.split_file=null", "subset.batch_size=8"]


def stage_store(folder: Path, size: int) -> dict:
    from omegaconf import OmegaConf

    from hessdistill.api import compose
    from hessdistill.data.store import HessianStore
    from hessdistill.data.subset import build_store

    out = {}
    iodine = OmegaConf.create({"name": "spice_iodine_like", "store": str(folder / f"spice_iodine-{size}.h5"),
                               "source": {"_target_": "hessdistill.data.sources.spice_hdf5.read_spice",
                                          "path": str(folder / f"spice-{size}.hdf5")},
                               "select": [{"_target_": "hessdistill.data.selectors.ContainsElements",
                                           "elements": ["I"]}]})
    for name, subset in (("mptrj", compose("precompute", *_subset_overrides(folder, size)).subset),
                         ("spice", iodine)):
        began = time.perf_counter()
        with HessianStore(build_store(subset)) as store:
            out[name] = {"seconds": time.perf_counter() - began, "kept": len(store),
                         "store_mb": store.path.stat().st_size / 1e6}
    return out


def stage_precompute(folder: Path, size: int) -> dict:
    from hessdistill.api import compose
    from hessdistill.cli.precompute import run

    began = time.perf_counter()
    result = run(compose("precompute", *TEACHER, *_subset_overrides(folder, size), "storage.layout=rows",
                         f"storage.rows={ROWS}", "batch_size=8", "device=cpu"))
    return {"seconds": time.perf_counter() - began, "structures": result["computed"]}


class LoaderTimer(L.Callback):
    """Seconds waiting on the loader (from one batch's end to the next one's start) and in the training step (start
    to end), after the first ``skip`` batches (workers starting, caches warming); written as JSON to ``path`` when
    training ends. Added to a run's callbacks by config (``+callbacks.timer``)."""

    def __init__(self, path: str, skip: int = 2) -> None:
        self.path, self.skip = path, skip
        self.seen, self.wait, self.step, self.last_end, self.start = 0, 0.0, 0.0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self.last_end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.start = time.perf_counter()
        if self.seen >= self.skip:
            self.wait += self.start - self.last_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.last_end = time.perf_counter()
        if self.seen >= self.skip:
            self.step += self.last_end - self.start
        self.seen += 1

    def on_train_end(self, trainer, module) -> None:
        Path(self.path).write_text(json.dumps({"batches": self.seen, "timed": self.seen - self.skip,
                                               "wait": self.wait, "step": self.step}))


def stage_train(folder: Path, size: int, workers: int = 0, batches: int | None = None) -> dict:
    from hessdistill.api import compose
    from hessdistill.cli import train

    timings = folder / f"timer-{size}-w{workers}.json"
    cfg = compose("train", *TEACHER, *_subset_overrides(folder, size), "student=painn_small", "distill=hessian",
                  f"rows={ROWS}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "test=false",
                  f"datamodule.num_workers={workers}", "+callbacks.timer._target_=__main__.LoaderTimer",
                  f"+callbacks.timer.path={timings}",
                  *([f"+trainer.limit_train_batches={batches}", "+trainer.limit_val_batches=2"] if batches else []))
    began = time.perf_counter()
    train.run(cfg, str(folder / f"run-{size}-w{workers}"))
    t = json.loads(timings.read_text())
    return {"seconds": time.perf_counter() - began, "batches": t["batches"], "wait_ms": 1e3 * t["wait"] / t["timed"],
            "step_ms": 1e3 * t["step"] / t["timed"], "wait_fraction": t["wait"] / (t["wait"] + t["step"])}


def run_stage(stage: str, folder: Path, size: int) -> dict:
    """One stage in a fresh process: its result, wall time and peak RSS (MB; ru_maxrss of it and its reaped
    children, e.g. DataLoader workers)."""
    result_path = folder / f"{stage}-{size}.json"
    log = (folder / f"{stage}-{size}.log").open("w")
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--folder", str(folder),
                              "--sizes", str(size)], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    if child.returncode != 0:
        raise RuntimeError(f"stage {stage} at size {size} failed (exit {child.returncode}); see {log.name}")
    return {**json.loads(result_path.read_text()), "wall": wall, "rss_mb": usage.ru_maxrss / 1024}


def child_main(stage: str, folder: Path, size: int) -> None:
    if stage == "generate":
        began = time.perf_counter()
        result = {"mptrj": write_mptrj(folder / f"mptrj-{size}.json", size),
                  "spice": write_spice(folder / f"spice-{size}.hdf5", size), "seconds": time.perf_counter() - began,
                  "mptrj_mb": (folder / f"mptrj-{size}.json").stat().st_size / 1e6,
                  "spice_mb": (folder / f"spice-{size}.hdf5").stat().st_size / 1e6}
    elif stage == "store":
        result = stage_store(folder, size)
    elif stage == "precompute":
        result = stage_precompute(folder, size)
    elif stage == "train":
        result = stage_train(folder, size)
    else:
        result = stage_train(folder, size, workers=2, batches=40)
    (folder / f"{stage}-{size}.json").write_text(json.dumps(result))


# ---- the report ---------------------------------------------------------------------------------------------------
def report(results: dict[int, dict]) -> None:
    sizes = sorted(results)
    print(f"\n{'entries':>8s} {'stage':12s} {'peak RSS MB':>11s} {'wall s':>8s} {'throughput':>28s}")
    for size in sizes:
        for stage, r in results[size].items():
            if stage == "generate":
                rate = f"{size / r['seconds']:8.0f} entries/s ({r['mptrj_mb']:.0f}+{r['spice_mb']:.0f} MB)"
            elif stage == "store":
                rate = (f"{size / r['mptrj']['seconds']:6.0f}+{size / r['spice']['seconds']:.0f} entries/s "
                        f"(kept {r['mptrj']['kept']}+{r['spice']['kept']})")
            elif stage == "precompute":
                rate = f"{r['structures'] / r['seconds']:8.1f} structures/s ({r['structures']})"
            else:
                rate = f"wait {r['wait_ms']:.1f} ms / step {r['step_ms']:.0f} ms = {100 * r['wait_fraction']:.1f} %"
            print(f"{size:8d} {stage:12s} {r['rss_mb']:11.0f} {r['wall']:8.1f} {rate:>28s}")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"\ngrowth from {small} to {large} entries (×{large / small:.0f}):")
        for stage in results[large]:
            if stage in results[small]:
                a, b = results[small][stage], results[large][stage]
                print(f"  {stage:12s} peak RSS ×{b['rss_mb'] / a['rss_mb']:.2f}   wall ×{b['wall'] / a['wall']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1e4", "1e5"], help="source entries (frames, conformers)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--folder", default=None, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes]
    if args.stage:
        child_main(args.stage, Path(args.folder), sizes[0])
        return
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="hessdistill-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"work folder {folder}; {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    results: dict[int, dict] = {}
    try:
        for size in sizes:
            results[size] = {}
            for stage in ["generate", *stages]:
                results[size][stage] = r = run_stage(stage, folder, size)
                print(f"{size:8d} {stage:12s} peak RSS {r['rss_mb']:6.0f} MB, {r['wall']:7.1f} s", flush=True)
            for pattern in (f"mptrj-{size}.json", f"spice-{size}.hdf5"):  # the sources are the big files
                (folder / pattern).unlink(missing_ok=True)
        report(results)
        (folder / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
