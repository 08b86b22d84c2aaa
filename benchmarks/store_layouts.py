"""Teacher-label storage: file size and per-structure read time of every Hessian layout, dtype and compression.

From one labelled store (default: the 180 demo molecules labelled with ANI-1x here, ~15 s), each variant —
layout full / upper / rows (k rows), float32 / float16, uncompressed / gzip / lzf — is written with the same
labels and read the way training reads it: a random structure, s random rows of its stored ones
(``HessianStore.hessian_rows``). Prints the Hessian dataset's bytes on disk and µs per read relative to full
float32 uncompressed, the whole file's size, and the worst error of each variant against the source labels.
Machines are shared and noisy: compare the ratios of one run.

    python benchmarks/store_layouts.py [--store stores/x.h5 --teacher mace] [--rows 4] [--reads 2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hessdistill.config import dataset_path
from hessdistill.data.sources.ase_files import read_ase
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.data.store_compression import compress_store

DEMO = dataset_path("demo/hcno_wb97x_631gd.extxyz")
VARIANTS = [(layout, dtype, comp) for layout in ("full", "upper", "rows") for dtype in ("float32", "float16")
            for comp in (None, "gzip", "lzf")]


def labelled_demo(workdir: Path) -> tuple[Path, str]:
    """The demo molecules with ANI-1x labels, in a store under ``workdir``."""
    from hessdistill.teacher_step.run import precompute_teacher
    from hessdistill.teachers.ani import ANITeacher

    path = workdir / "demo_ani1x.h5"
    write_structures(path, read_ase(DEMO))
    with HessianStore(path, "a") as store:
        precompute_teacher(store, ANITeacher("ani1x").freeze(), batch_size="auto", progress=False)
    return path, "ani1x"


def write_variant(source: HessianStore, teacher: str, path: Path, layout: str, dtype: str, k: int) -> None:
    """A store with ``source``'s structures and its teacher's labels in the given layout and dtype."""
    write_structures(path, list(source.structures()))
    rng = np.random.default_rng(0)
    with HessianStore(path, "a") as out:
        attrs = {key: value for key, value in source.teacher_group(teacher).attrs.items()
                 if key not in ("hessian_layout", "hessian_dtype", "rows_per_structure", "created")}
        out.create_teacher(teacher, attrs, layout=layout, dtype=dtype,
                           rows_per_structure=k if layout == "rows" else None)
        for i in range(len(source)):
            energy, forces = source.teacher_labels(teacher, i)
            h = source.hessian(teacher, i)
            if layout == "rows":
                rows = np.sort(rng.choice(len(h), k, replace=False))
                out.write_teacher(teacher, i, energy, forces, h[rows], rows=rows)
            else:
                out.write_teacher(teacher, i, energy, forces, h.astype(np.float64), asymmetry=0.0)


def time_reads(path: Path, teacher: str, s: int, reads: int) -> tuple[float, list]:
    """µs per read of s stored rows of a random structure, and the (structure, rows) reads made."""
    rng = np.random.default_rng(1)
    with HessianStore(path) as store:
        picks = [(int(i), rng.permutation(store.stored_rows(teacher, int(i)))[:s])
                 for i in rng.integers(len(store), size=reads)]
        store.hessian_rows(teacher, 0, store.stored_rows(teacher, 0)[:s])  # open the datasets once
        start = time.perf_counter()
        for i, rows in picks:
            store.hessian_rows(teacher, i, rows)
        seconds = time.perf_counter() - start
    return 1e6 * seconds / reads, picks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, default=None, help="a labelled store (default: label the demo set)")
    p.add_argument("--teacher", default=None, help="teacher group in --store")
    p.add_argument("--rows", type=int, default=4, help="k rows per structure for layout rows, s rows per read")
    p.add_argument("--reads", type=int, default=2000)
    args = p.parse_args()
    if args.store and not args.teacher:
        p.error("--store needs --teacher")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path, teacher = (args.store, args.teacher) if args.store else labelled_demo(workdir)
        with HessianStore(path) as source:
            if source.teacher_group(teacher).attrs["hessian_layout"] == "rows":
                p.error(f"{path}: teacher {teacher} stores row subsets; the variants need full Hessians")
            sizes = 3 * source.n_atoms()
            print(f"{path}: {len(source)} structures of {sizes.min() // 3}–{sizes.max() // 3} atoms, teacher "
                  f"{teacher}; reads of s = {args.rows} rows of a random structure")
            reference, rows = {}, []
            for layout, dtype, comp in VARIANTS:
                out = workdir / f"{layout}_{dtype}_{comp}.h5"
                base = workdir / f"{layout}_{dtype}_None.h5"
                if comp is None:
                    write_variant(source, teacher, out, layout, dtype, args.rows)
                else:
                    shutil.copy(base, out)
                    compress_store(out, comp)
                us, picks = time_reads(out, teacher, args.rows, args.reads)
                with HessianStore(out) as store:
                    err = max(float(np.abs(store.hessian_rows(teacher, i, r)
                                           - source.hessian_rows(teacher, i, r)).max())
                              for i, r in picks[:200])
                    hessian_bytes = store.teacher_group(teacher)["hessian"].id.get_storage_size()
                rows.append((layout, dtype, comp or "none", hessian_bytes, out.stat().st_size, us, err))
                reference.setdefault("bytes", hessian_bytes)
                reference.setdefault("us", us)
        print(f"{'layout':6s} {'dtype':8s} {'filter':6s} {'Hessian MB':>10s} {'size':>6s} {'file MB':>8s} "
              f"{'µs/read':>8s} {'read':>6s} {'max |err| eV/Å²':>16s}")
        for layout, dtype, comp, size, file_size, us, err in rows:
            print(f"{layout:6s} {dtype:8s} {comp:6s} {size / 1e6:10.3f} {size / reference['bytes']:5.2f}x "
                  f"{file_size / 1e6:8.3f} {us:8.1f} {us / reference['us']:5.2f}x {err:16.2e}")


if __name__ == "__main__":
    main()
