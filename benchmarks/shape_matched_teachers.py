"""Students against the teachers users really distil, on speed: MACE models with the *published* hyper-parameters of
MACE-OFF23 small / medium / large and MACE-MP-0 small / medium / large, with random weights ("shape-matched": no
MACE foundation-model weights can be had offline, and speed does not depend on weight values), and materials
teachers with their real weights (CHGNet, SevenNet-0).

Published hyper-parameters (all: 2 interactions, correlation order 3 (body order 4), spherical harmonics up to
l = 3 in the messages, polynomial cutoff envelope p = 5, readout MLP 16×0e):
  - MACE-OFF23 (Kovács et al., arXiv:2312.15211, Table 1; ACEsuit/mace-off, mace_off23/train_scripts/medium.sh):
    10 elements (H C N O F P S Cl Br I), 8 Bessel functions, radial MLP [64, 64, 64];
    small 96 channels, L = 0, cutoff 4.5 Å; medium 128 channels, L = 1, 5.0 Å; large 192 channels, L = 2, 5.0 Å.
  - MACE-MP-0 (Batatia et al., arXiv:2401.00096; ACEsuit/mace-mp, mace_mp_0/2023-12-10-mace-128-L0.sh,
    2023-12-03-mace-128-L1.sh, 2024-01-07-mace-128-L2.sh): ScaleShiftMACE, 89 elements, 10 Bessel functions,
    cutoff 6.0 Å, 128 channels; small L = 0, medium L = 1, large L = 2.

Real materials teachers with their published weights, which ship in their wheels and so run here: CHGNet 0.3.0
(``--real chgnet``) and SevenNet-0 (``--real sevennet``), timed through the same ``energy_forces`` protocol as the
students (their own graph construction inside every call). Give them periodic cells: ``--structures FILE --count N``
(e.g. the GeSbTe DFT cells; the MACE-OFF shape-matched models do not cover Ge, Sb, Te: ``--teachers`` with no names).

Teachers and students build their radius graph the same way (vesin, batched) inside every call, so both are timed on
the same work: energies and forces from positions. Reported per model: structures/s and ns/day at batch 64 and at
the throughput-maximising batch (``hessdistill.evaluation.speed``), and MD ns/day per trajectory with torch-sim
replicas at 64 and at the replica count that maximises the total (``hessdistill.evaluation.batched_md``); then the
student/teacher ratios. Machines are shared and noisy: `--passes 2` measures every model twice and keeps each
figure's best pass; compare the ratios of one run.

    OMP_NUM_THREADS=1 python benchmarks/shape_matched_teachers.py [--teachers off_small off_medium off_large mp_small]
        [--students painn painn_small gemnet_dt] [--device cpu] [--max-batch 256] [--md-steps 3] [--passes 2]
    OMP_NUM_THREADS=1 python benchmarks/shape_matched_teachers.py --teachers --real chgnet sevennet \
        --structures gesbte_dft_200.xyz --count 8 --max-batch 64 --repeat 1 --md-steps 2 \
        --student-overrides student.cutoff=6.0      # materials students: the paper's MPtrj cutoff (PaiNN's 12 Å is
                                                    # SPICE's: ~50 GB at batch 64 of 81-atom GeSbTe cells)
"""

from __future__ import annotations

import argparse

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from hessdistill.config import CONFIG_DIR, dataset_path
from hessdistill.data.graph import batch_radius_graph
from hessdistill.data.sources.ase_files import read_ase

DEMO = dataset_path("demo/hcno_wb97x_631gd.extxyz")
OFF_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
MP_ELEMENTS = tuple(range(1, 90))  # 89 elements: the published one-hot width
SPECS = {  # name → (label, elements, channels, L, cutoff Å, Bessel functions, ScaleShiftMACE)
    "off_small": ("MACE-OFF23 small", OFF_ELEMENTS, 96, 0, 4.5, 8, False),
    "off_medium": ("MACE-OFF23 medium", OFF_ELEMENTS, 128, 1, 5.0, 8, False),
    "off_large": ("MACE-OFF23 large", OFF_ELEMENTS, 192, 2, 5.0, 8, False),
    "mp_small": ("MACE-MP-0 small", MP_ELEMENTS, 128, 0, 6.0, 10, True),
    "mp_medium": ("MACE-MP-0 medium", MP_ELEMENTS, 128, 1, 6.0, 10, True),
    "mp_large": ("MACE-MP-0 large", MP_ELEMENTS, 128, 2, 6.0, 10, True),
}
REAL = {"chgnet": "CHGNet 0.3.0", "sevennet": "SevenNet-0"}  # conf/teacher/<key>.yaml → label


class ShapeMatchedMACE(nn.Module):
    """A mace-torch MACE with a published model's hyper-parameters (``SPECS``) and random weights, with the
    ``energy_forces(batch)`` protocol: radius graph by vesin (as students), forces by MACE's own autograd."""

    def __init__(self, name: str, seed: int = 0) -> None:
        super().__init__()
        import mace  # noqa: F401  (must come before e3nn)
        from e3nn import o3
        from mace import modules

        self.label, elements, channels, lmax, cutoff, bessel, scale_shift = SPECS[name]
        irreps = "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        kwargs = dict(r_max=cutoff, num_bessel=bessel, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
                      interaction_cls_first=block, num_interactions=2, num_elements=len(elements),
                      hidden_irreps=o3.Irreps(irreps), MLP_irreps=o3.Irreps("16x0e"),
                      atomic_energies=np.zeros(len(elements)), avg_num_neighbors=10.0, atomic_numbers=list(elements),
                      correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64])
        torch.manual_seed(seed)
        self.model = (modules.ScaleShiftMACE(atomic_inter_scale=1.0, atomic_inter_shift=0.0, **kwargs)
                      if scale_shift else modules.MACE(**kwargs))
        index = torch.full((119,), -1, dtype=torch.long)
        index[list(elements)] = torch.arange(len(elements))
        self.register_buffer("element_index", index)
        self.cutoff = cutoff

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV and forces (N, 3) eV/Å, detached."""
        dtype = next(self.parameters()).dtype
        pos = batch.pos.to(dtype)
        edge_index, edge_shift = batch_radius_graph(batch, self.cutoff)
        index = self.element_index[batch.z]
        # MACE's edge vector is r_receiver − r_sender + shift; ours (source → target) is r_src − r_dst + shift
        data = {"positions": pos, "edge_index": edge_index, "shifts": -edge_shift.to(dtype),
                "unit_shifts": torch.zeros_like(pos[: edge_index.shape[1]]),
                "node_attrs": nn.functional.one_hot(index, self.element_index.max() + 1).to(dtype),
                "cell": batch.cell.to(dtype).reshape(-1, 3), "batch": batch.batch, "ptr": batch.ptr,
                "head": torch.zeros(batch.num_graphs, dtype=torch.long, device=pos.device)}
        out = self.model(data, training=False, compute_force=True)
        return out["energy"].detach().double(), out["forces"].detach()


def check_against_mace_pipeline(teacher: ShapeMatchedMACE, structures) -> float:
    """Max |ΔE| (eV) between the vesin-graph wrapper and mace-torch's own data pipeline (``MACETeacher``) on these
    structures, in float64: the wrapper computes the published model, not something else."""
    import copy

    from torch_geometric.data import Batch

    from hessdistill.teachers.mace import MACETeacher

    model = copy.deepcopy(teacher).double()
    reference = MACETeacher(copy.deepcopy(model.model), dtype="float64")
    batch = Batch.from_data_list([s.to_data(torch.float64) for s in structures])
    e_ours, f_ours = model.energy_forces(batch)
    e_mace, f_mace = reference.energy_forces(batch)
    return max(float((e_ours - e_mace.double()).abs().max()), float((f_ours - f_mace.double()).abs().max()))


def build_real_teacher(name: str):
    """A teacher with its real published weights, from its config (``conf/teacher/<name>.yaml``)."""
    from hessdistill.teachers import instantiate_teacher

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return instantiate_teacher(compose("precompute", overrides=[f"teacher={name}"]).teacher)


def build_student(name: str, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"student={name}", *overrides]).student
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg).eval()


def measure(model, structures, atoms, max_batch: int, md_steps: int, repeat: int) -> dict:
    """Speed at batch 64 and the best batch; MD throughput over ``md_steps`` steps (0: none)."""
    from hessdistill.evaluation.speed import speed_report

    out = speed_report(model, structures, 64, max_batch, repeat)
    if md_steps:
        from hessdistill.evaluation.batched_md import md_throughput

        out.update({f"md_{k}": v for k, v in md_throughput(atoms, model, 64, max_batch, steps=md_steps).items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", nargs="*", default=["off_small", "off_medium", "off_large"], choices=sorted(SPECS))
    p.add_argument("--real", nargs="*", default=[], choices=sorted(REAL), help="teachers with their real weights")
    p.add_argument("--structures", default=None, help="an ASE-readable file of structures (default: the demo set)")
    p.add_argument("--count", type=int, default=30, help="structures taken from it, evenly spaced")
    p.add_argument("--student-overrides", nargs="*", default=[],
                   help="Hydra overrides for every student, e.g. student.cutoff=6.0 (the paper's MPtrj cutoff)")
    p.add_argument("--students", nargs="+", default=["painn", "painn_small", "gemnet_dt"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="students and teachers alike")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch / replica count (CPU 256, GPU 8192)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--passes", type=int, default=1, help="measure every model this many times; keep its best pass")
    p.add_argument("--md-steps", type=int, default=3, help="MD steps timed per replica count (0: no MD throughput)")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    max_batch = args.max_batch or (8192 if device.type == "cuda" else 256)
    frames = list(read_ase(args.structures or DEMO, require_labels=False))
    structures = frames[:: max(1, len(frames) // args.count)][: args.count]  # the demo: 30 across its six molecules
    atoms = structures[0].to_atoms()
    print(f"device {device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{len(structures)} structures of {args.structures or 'the demo set'} with "
          f"{min(s.n_atoms for s in structures)}–{max(s.n_atoms for s in structures)} atoms; MD on "
          f"{atoms.get_chemical_formula()}")
    models = {}
    for name in args.teachers:
        teacher = ShapeMatchedMACE(name)
        error = check_against_mace_pipeline(teacher, structures[:3])
        assert error < 1e-8, f"{name}: the vesin-graph wrapper differs from mace-torch's pipeline by {error:.2e}"
        label = f"{teacher.label} (shape-matched, {sum(q.numel() for q in teacher.parameters()) / 1e6:.2f}M)"
        models[label] = teacher.to(device=device, dtype=dtype)
    for name in args.real:  # in the precision they were trained and ship in (float32)
        teacher = build_real_teacher(name).to(device)
        models[f"{REAL[name]} (real weights, {sum(q.numel() for q in teacher.parameters()) / 1e6:.2f}M)"] = teacher
    for name in args.students:
        student = build_student(name, args.student_overrides).to(device=device, dtype=dtype)
        models[f"student {name} ({student.force_mode}, {sum(q.numel() for q in student.parameters()) / 1e6:.2f}M)"] \
            = student
    passes = {label: [] for label in models}
    for k in range(args.passes):  # every model once per pass (shared machines: keep each figure's best pass)
        for label, model in models.items():
            passes[label].append(measure(model, structures, atoms, max_batch, args.md_steps, args.repeat))
            print(f"pass {k}: {label} {passes[label][-1]}", flush=True)
    rows = {label: best_of(runs) for label, runs in passes.items()}
    keys = ["structures_per_s", "best_batch", "best_structures_per_s"]
    if args.md_steps:
        keys += ["md_single_trajectory_ns_per_day", "md_per_trajectory_ns_per_day", "md_best_replicas",
                 "md_best_per_trajectory_ns_per_day", "md_best_total_ns_per_day"]
    print("\n| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")
    ratio_keys = ["structures_per_s", "best_structures_per_s"]
    if args.md_steps:
        ratio_keys += ["md_single_trajectory_ns_per_day", "md_per_trajectory_ns_per_day", "md_best_total_ns_per_day"]
    print("\nstudent/teacher speed ratios (" + " | ".join(ratio_keys) + ")")
    teachers = [label for label in rows if "shape-matched" in label or "real weights" in label]
    for student in (label for label in rows if label.startswith("student")):
        for teacher in teachers:
            ratios = [rows[student][k] / rows[teacher][k] for k in ratio_keys]
            print(f"  {student} vs {teacher}: " + " | ".join(f"{r:.3g}x" for r in ratios))


def best_of(runs: list[dict]) -> dict:
    """Each figure from its best pass: the highest rate; a batch or replica count from the pass of its rate."""
    rate_of = {"best_batch": "best_structures_per_s", "best_ns_per_day": "best_structures_per_s",
               "ns_per_day": "structures_per_s", "md_best_replicas": "md_best_total_ns_per_day",
               "md_best_per_trajectory_ns_per_day": "md_best_total_ns_per_day"}
    return {key: max(runs, key=lambda run: run[rate_of.get(key, key)])[key] for key in runs[0]}


if __name__ == "__main__":
    main()
