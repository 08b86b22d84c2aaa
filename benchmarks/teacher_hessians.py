"""Teacher Hessian labelling throughput: our batched block-diagonal path vs one structure at a time vs mace-torch.

On the same structures, in one run, it times full Hessians with
  1. ``teacher.hessians(batch of B, strategy="vmap")``: max_i 3N_i VJP lanes for the whole batch;
  2. the same call one structure at a time (batch of 1, vmap over 3N lanes);
  3. a plain Python loop of 3N ``torch.autograd.grad`` calls per structure (strategy "loop", batch of 1);
  4. mace-torch's references: ``mace.modules.utils.compute_hessians_vmap`` / ``compute_hessians_loop`` applied to
     the teacher's forces (one structure per call; with --mace-whole-batch also vmap on whole batches,
     3·Ntot lanes), and, for MACE,
     ``MACECalculator.get_hessian`` (one structure per call, with mace-torch's own data pipeline).
It checks that every method gives the same Hessians, prints structures/s and Hessian rows/s (rows = Σ 3N_i),
ratios measured in this run, and the cost of k sampled rows per structure (``force_jacobian_rows``) vs 3N.
Machines are shared and noisy: compare the ratios of one run, never seconds across runs.

    python benchmarks/teacher_hessians.py --teacher mace [--model PATH] [--device cpu] [--n-structures 16]
    python benchmarks/teacher_hessians.py --teacher ani1x
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from hessdistill.config import dataset_path
from hessdistill.data.sources.ase_files import read_ase
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.hessian.memory import MemoryBudget
from hessdistill.hessian.rows import force_jacobian_rows, sample_batch_rows
from hessdistill.teacher_step.batch_size import size_sorted
from hessdistill.teacher_step.run import precompute_teacher

ROOT = Path(__file__).resolve().parents[1]
DEMO = dataset_path("demo/hcno_wb97x_631gd.extxyz")
DEFAULT_MODEL = "../shared/teachers/mace_spice_test.model"


# ---- setup ------------------------------------------------------------------------------------------------
def tiny_random_mace(seed: int = 0):
    """A small random-weight MACE for H/C/N/O (only when no model file is available)."""
    import mace  # noqa: F401  (must be imported before e3nn)
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        atomic_inter_scale=1.0, atomic_inter_shift=0.0, r_max=5.0, num_bessel=8, num_polynomial_cutoff=5,
        max_ell=3, interaction_cls=block, interaction_cls_first=block, num_interactions=2, num_elements=4,
        hidden_irreps=o3.Irreps("32x0e+32x1o"), MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(4),
        avg_num_neighbors=8.0, atomic_numbers=[1, 6, 7, 8], correlation=3, gate=torch.nn.functional.silu,
    )


def build_teacher(args):
    if args.teacher == "ani1x":
        from hessdistill.teachers.ani import ANITeacher

        return ANITeacher("ani1x"), "ANI-1x (torchani bundled ensemble of 8)"
    from hessdistill.teachers.mace import MACETeacher

    path = Path(args.model).expanduser()
    if not path.is_absolute() and not path.exists():
        path = (ROOT / args.model).resolve()
    if path.is_file():
        return MACETeacher(str(path), name=path.stem), f"MACE model file {path}"
    print(f"NOTE: MACE model {args.model} not found; using a small RANDOM-WEIGHT MACE built with mace-torch "
          "(hidden 32x0e+32x1o, 2 interactions, max_ell 3, correlation 3). Timings are for that model.")
    return MACETeacher(tiny_random_mace(), name="random_mace"), "random-weight MACE (fallback)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int):
    """Warm-up call, then mean seconds over ``repeat`` calls; returns (seconds, result of the last call)."""
    result = fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    sync(device)
    return (time.perf_counter() - start) / repeat, result


@contextlib.contextmanager
def watch_mace_vmap():
    """Record what mace-torch's ``compute_hessians_vmap`` really does: the ``chunk_size`` it passes to torch.vmap
    (chunk_size=1 is, per torch's docs, a for-loop of single-lane backwards) and whether it silently fell back
    to ``compute_hessians_loop`` after a RuntimeError."""
    import mace.modules.utils as mu

    log = {"vmap_calls": 0, "chunk_sizes": set(), "lanes": set(), "fallbacks": 0, "errors": set()}
    real_vmap, real_loop = torch.vmap, mu.compute_hessians_loop

    def vmap(func, *a, **kw):
        log["vmap_calls"] += 1
        log["chunk_sizes"].add(kw.get("chunk_size"))
        mapped = real_vmap(func, *a, **kw)

        def call(*xs):
            log["lanes"].add(int(xs[0].shape[0]))
            try:
                return mapped(*xs)
            except RuntimeError as exc:
                log["errors"].add(str(exc).splitlines()[0][:160])
                raise
        return call

    def loop(*a, **kw):
        log["fallbacks"] += 1
        return real_loop(*a, **kw)

    torch.vmap, mu.compute_hessians_loop = vmap, loop
    try:
        yield log
    finally:
        torch.vmap, mu.compute_hessians_loop = real_vmap, real_loop


def describe_mace_vmap(log) -> str:
    if log["vmap_calls"] == 0:
        return "torch.vmap was never called"
    parts = [f"{log['vmap_calls']} torch.vmap call(s), lanes per call {sorted(log['lanes'])}, "
             f"chunk_size {sorted(c for c in log['chunk_sizes'] if c is not None) or [None]}"]
    if log["fallbacks"]:
        parts.append(f"FELL BACK to compute_hessians_loop {log['fallbacks']}x after RuntimeError: "
                     + "; ".join(sorted(log["errors"])))
    elif log["chunk_sizes"] == {1}:
        parts.append("chunk_size=1 (mace uses it when 3N < 64, i.e. N < 22 atoms) = a Python loop of 3N "
                     "single-lane backwards: NOT vectorised")
    else:
        parts.append("really vectorised (chunks of 16 lanes)" if 16 in log["chunk_sizes"] else "vectorised")
    return "; ".join(parts)


# ---- methods: each returns a list of (3N, 3N) float64 CPU Hessians in structure order ------------------------
def chunk_arg(value: str) -> int | str | None:
    """--chunk-size: "auto", "all" (None) or a number of lanes."""
    return value if value == "auto" else None if value == "all" else int(value)


def lane_chunks(chunk_size):
    """``teacher.hessians``'s chunk argument for a --chunk-size value (precompute_teacher takes the value itself)."""
    return MemoryBudget() if chunk_size == "auto" else chunk_size


def ours(teacher, batches, chunk_size, strategy):
    out = []
    for b in batches:
        out += [h.cpu() for h in teacher.hessians(b, chunk_size=lane_chunks(chunk_size), strategy=strategy).hessians]
    return out


def precompute_run(teacher, structures, batch_size, chunk_size, workdir: Path, chosen: dict):
    """``precompute_teacher`` into a fresh temporary store (what ``hessdistill-precompute`` does, HDF5 writes
    included); returns the stored Hessians and records the batch size it settled on in ``chosen``."""
    path = workdir / f"bench-{batch_size}.h5"
    path.unlink(missing_ok=True)
    write_structures(path, structures)
    with HessianStore(path, "a") as store:
        result = precompute_teacher(store, teacher, batch_size=batch_size, chunk_size=chunk_size, strategy="vmap",
                                    progress=False)
        out = [torch.as_tensor(store.hessian(teacher.name, i)).double() for i in range(len(structures))]
    path.unlink()
    chosen[batch_size] = (result["batch_size"], result["batch_rates"])
    return out


def mace_utils(teacher, batches, fn):
    """mace-torch's Hessian function on the teacher's forces (any teacher: the function only needs F(r) and r)."""
    out = []
    for b in batches:
        b = teacher._prepare(b)
        with torch.enable_grad():
            energy = teacher.energy(b)
            (grad,) = torch.autograd.grad(energy.sum(), b.pos, create_graph=True)
            h = fn(-grad, b.pos).detach()  # (3·Ntot, Ntot, 3) = ∂(−F_flat)/∂r
        h = h.reshape(h.shape[0], -1).cpu()
        out += [h[3 * a:3 * c, 3 * a:3 * c] for a, c in zip(b.ptr[:-1].tolist(), b.ptr[1:].tolist())]
    return out


def mace_calculator(calc, atoms_list):
    out = []
    for atoms in atoms_list:
        h = calc.get_hessian(atoms=atoms)  # numpy (3N, N, 3)
        out.append(torch.as_tensor(h).reshape(h.shape[0], -1))
    return out


def max_diff(a, b) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))


# ---- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", choices=["mace", "ani1x"], default="mace")
    p.add_argument("--model", default=DEFAULT_MODEL, help="MACE .model file (mace only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-structures", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="timed rounds after a warm-up (best of)")
    p.add_argument("--chunk-size", type=chunk_arg, default="auto",
                   help="lanes per batched VJP: auto (half the free memory, as hessdistill-precompute), N, or all")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: 1 on CPU)")
    p.add_argument("--data", default=str(DEMO))
    p.add_argument("--mace-whole-batch", action="store_true",
                   help="also time mace-torch compute_hessians_vmap on whole batches (3·Ntot lanes; ~45 s more "
                        "for MACE on 1 CPU core, where it was 4.8x slower than our batched path)")
    args = p.parse_args()
    device = torch.device(args.device)
    # on CPU default to one thread: these graphs are tiny, and on a shared 2-core machine OpenMP barriers made
    # multi-threaded backwards erratic (a first 2-thread run here timed the same loop 6.6 s and 24 s)
    torch.set_num_threads(args.threads or (1 if device.type == "cpu" else torch.get_num_threads()))

    teacher, what = build_teacher(args)
    teacher = teacher.to(device)
    structures = list(read_ase(args.data))
    step = max(1, len(structures) // args.n_structures)  # evenly spaced: a mix of molecules and sizes
    structures = structures[::step][: args.n_structures]
    # batched as precompute batches them: by size, so a batch's lanes (3·N_max) waste little on smaller members
    structures = [structures[i] for i in size_sorted(np.array([s.n_atoms for s in structures]))]
    n_atoms = [s.n_atoms for s in structures]
    n_rows = 3 * sum(n_atoms)
    data = [s.to_data(torch.float64) for s in structures]
    B = args.batch_size
    batches = [Batch.from_data_list(data[i:i + B]) for i in range(0, len(data), B)]
    singles = [Batch.from_data_list([d]) for d in data]
    lanes_batched = sum(3 * max(n_atoms[i:i + B]) for i in range(0, len(n_atoms), B))

    print(f"teacher: {what}; device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{teacher.dtype}")
    print(f"{len(structures)} structures from {Path(args.data).name}: atoms {min(n_atoms)}-{max(n_atoms)} "
          f"(mean {np.mean(n_atoms):.1f}), {n_rows} Hessian rows in all; batch {B} -> {len(batches)} batches, "
          f"{lanes_batched} batched VJP lanes vs {n_rows} one at a time; "
          f"best of {args.repeat} round-robin round(s) after a warm-up; "
          f"chunk size {args.chunk_size or 'all'}")

    workdir, chosen = Path(tempfile.mkdtemp(prefix="hessdistill-bench-")), {}
    methods = {
        "precompute batch_size=auto": lambda: precompute_run(teacher, structures, "auto", args.chunk_size,
                                                             workdir, chosen),
        "precompute batch_size=1": lambda: precompute_run(teacher, structures, 1, args.chunk_size, workdir, chosen),
        "ours batched (vmap, batch B)": lambda: ours(teacher, batches, args.chunk_size, "vmap"),
        "ours one-at-a-time (vmap)": lambda: ours(teacher, singles, args.chunk_size, "vmap"),
        "ours loop of 3N grads (batch 1)": lambda: ours(teacher, singles, None, "loop"),
    }
    try:
        import mace.modules.utils as mu

        methods["mace-torch compute_hessians_vmap (1/call)"] = lambda: mace_utils(teacher, singles,
                                                                                  mu.compute_hessians_vmap)
        methods["mace-torch compute_hessians_loop (1/call)"] = lambda: mace_utils(teacher, singles,
                                                                                  mu.compute_hessians_loop)
        if args.mace_whole_batch:  # 3·Ntot lanes incl. the zero cross-structure blocks: slow, opt-in
            methods["mace-torch compute_hessians_vmap (batch B)"] = lambda: mace_utils(teacher, batches,
                                                                                       mu.compute_hessians_vmap)
    except Exception as exc:  # noqa: BLE001
        print(f"mace-torch Hessian utilities unavailable ({type(exc).__name__}: {exc}); skipped")
    if args.teacher == "mace":
        try:
            import logging

            from mace.calculators import MACECalculator

            logging.disable(logging.WARNING)  # the calculator logs dtype/head choices at WARNING
            model = teacher.model
            if not torch.is_tensor(model.r_max):  # older .model files store r_max as a float; the calculator
                model = copy.deepcopy(model)        # calls r_max.cpu(), so give its own copy a tensor
                model.r_max = torch.tensor(float(model.r_max), dtype=torch.float64)
                print("note: model.r_max is a float (older mace file); MACECalculator gets a copy with a tensor r_max")
            calc = MACECalculator(models=model, device=str(device), default_dtype="float64")
            logging.disable(logging.NOTSET)
            atoms_list = [s.to_atoms() for s in structures]
            methods["mace-torch MACECalculator.get_hessian"] = lambda: mace_calculator(calc, atoms_list)
        except Exception as exc:  # noqa: BLE001
            print(f"MACECalculator unavailable ({type(exc).__name__}: {exc}); skipped")

    # warm-up every method once, then time them round-robin (``repeat`` rounds, best of): load that drifts
    # during the run (shared machines) then hits every method alike instead of whichever ran last
    times, results, logs = {}, {}, {}
    for name, fn in list(methods.items()):
        try:
            with (watch_mace_vmap() if name.startswith("mace-torch") else contextlib.nullcontext({})) as log:
                results[name] = fn()
            logs[name] = log
        except Exception as exc:  # noqa: BLE001
            print(f"{name}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); carrying on")
            del methods[name]
    for _ in range(args.repeat):
        for name, fn in methods.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - start)
    mace_notes = {name: describe_mace_vmap(log) for name, log in logs.items()
                  if name.startswith("mace-torch") and "loop" not in name}

    ref_name = "ours batched (vmap, batch B)"
    ref = results[ref_name]
    scale = max(float(h.abs().max()) for h in ref)
    asym = max(float((h - h.T).abs().max()) for h in ref)
    print(f"\nreference: {ref_name}; max |H| = {scale:.3g} eV/Å², max |H - H^T| = {asym:.2e}")
    print(f"{'method':44s} {'s/run':>8s} {'struct/s':>9s} {'rows/s':>9s} {'max|ΔH| vs batched':>20s}")
    for name, t in times.items():
        d = max_diff(results[name], ref)
        flag = "" if d <= 1e-6 * max(scale, 1.0) else "  <-- MISMATCH"
        print(f"{name:44s} {t:8.3f} {len(structures) / t:9.2f} {n_rows / t:9.1f} {d:20.2e}{flag}")
    for name, note in mace_notes.items():
        print(f"  {name}: {note}")

    t_b = times[ref_name]
    print()
    if "precompute batch_size=auto" in times and "precompute batch_size=1" in times:
        size, rates = chosen["auto"]
        state = "settled on" if size in rates else "was still probing at"
        print(f"precompute batch_size=auto {state} {size} (Hessian entries/s by size: "
              f"{ {k: round(v) for k, v in rates.items()} }; more structures give the probe more to go on)")
        print(f"speedup vs one-at-a-time: {times['precompute batch_size=1'] / times['precompute batch_size=auto']:.1f}x"
              f"  (hessdistill-precompute, batch_size=auto vs 1, HDF5 writes included)")
    if "ours one-at-a-time (vmap)" in times:
        print(f"speedup of batch B={B} vs one-at-a-time: {times['ours one-at-a-time (vmap)'] / t_b:.1f}x")
    # the remaining ratios are for what users run: precompute with batch_size=auto (else the fixed batch B)
    t_ours = times.get("precompute batch_size=auto", t_b)
    if "ours loop of 3N grads (batch 1)" in times:
        print(f"speedup vs loop of 3N autograd.grad (batch 1): "
              f"{times['ours loop of 3N grads (batch 1)'] / t_ours:.1f}x")
    for name in ("mace-torch MACECalculator.get_hessian", "mace-torch compute_hessians_vmap (1/call)",
                 "mace-torch compute_hessians_loop (1/call)", "mace-torch compute_hessians_vmap (batch B)"):
        if name in times:
            label = "get_hessian" if "get_hessian" in name else name.removeprefix("mace-torch ")
            print(f"speedup vs mace-torch {label}: {times[name] / t_ours:.1f}x")

    # ---- row subsets: k sampled rows per structure vs the full Hessian, on the first batch ---------------------
    b0 = batches[0]
    counts = b0.ptr[1:] - b0.ptr[:-1]
    width = 3 * int(counts.max())

    def forward():
        b = teacher._prepare(b0)
        with torch.enable_grad():
            energy = teacher.energy(b)
            (grad,) = torch.autograd.grad(energy.sum(), b.pos, create_graph=True)
        return b, -grad

    def rows_fn(k):
        def run():
            b, forces = forward()
            with torch.enable_grad():
                return force_jacobian_rows(forces, b.pos, rows[k].to(device), b.ptr, create_graph=False,
                                           strategy="vmap").detach()
        return run

    gen = torch.Generator().manual_seed(0)
    rows = {k: sample_batch_rows(counts.cpu(), k, gen) for k in (1, 4)}
    rep = max(args.repeat, 3)  # these calls are short: a few repeats steady them
    t_fwd, _ = timed(forward, device, rep)
    t_full, full = timed(lambda: teacher.hessians(b0, chunk_size=lane_chunks(args.chunk_size),
                                                  strategy="vmap").hessians, device, rep)
    line = []
    for k in (1, 4):
        t_k, jac = timed(rows_fn(k), device, rep)
        # check: row j of structure i from force_jacobian_rows is −H_i[j]
        err = max(float((-jac[l, a:c].reshape(-1) - full[i][int(rows[k][i, l])]).abs().max())
                  for i, (a, c) in enumerate(zip(b0.ptr[:-1].tolist(), b0.ptr[1:].tolist())) for l in range(k))
        line.append(f"k={k}: {t_k / t_full:.2f}x of full time (lanes {k}/{width} = {k / width:.2f}; "
                    f"beyond energy+forces {(t_k - t_fwd) / max(t_full - t_fwd, 1e-12):.2f}x; max|ΔH| {err:.1e})")
    print(f"row subsets (first batch, {b0.num_graphs} structures, full = {width} lanes, energy+forces alone "
          f"{t_fwd / t_full:.2f}x of full): " + "; ".join(line))


if __name__ == "__main__":
    main()
