"""Deploy a student as one metatomic model file (``metatomic-torch``): the file that ASE (``metatomic-ase``),
LAMMPS (``pair_style metatomic``), i-PI and this package's own torch-sim adapter load, without this package's model
code.

The file carries what a simulation engine needs: the cutoff (its neighbour-list request), the species the student
was trained on, units (Å, eV, eV/Å), the per-element reference energies (inside the energy) and, for a
direct-force student, the ``non_conservative_force`` output. Every student deploys, MACE included: the student's
``atom_outputs`` is traced (``torch.jit.trace``) on a small synthetic graph and checked, before anything is written,
against the eager student on a second graph of other sizes, so a student whose Python code bakes a size into the
trace is refused instead of deployed wrong. The dtype is the student's (float32 totals of ~10⁴ eV resolve ~1 meV;
deploy in float64 when totals matter more than speed).
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hessdistill.data.graph import batch_radius_graph, radius_graph
from hessdistill.errors import HessdistillError
from hessdistill.integrations.deployed_file import import_metatomic, load_deployed
from hessdistill.models.elements import N_ELEMENTS

DEPLOYED_NAME = "deployed.pt"  # the deployed model's file name in a training run directory


class DeployError(HessdistillError, ValueError):
    """A student that cannot be deployed; the message says which and why."""


class _StudentCore(nn.Module):
    """What gets traced: (z, pos, edge_index, edge_shift) → (atom interaction energies (N,), direct forces (N, 3) or
    (0, 3)). A representation's ``extra_graph`` index function runs inside, compiled (``torch.jit.script``)."""

    def __init__(self, student, graph_fn) -> None:
        super().__init__()
        self.student = student
        self.graph_fn = graph_fn

    def forward(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor) -> tuple[Tensor, Tensor]:
        graph = None
        if self.graph_fn is not None:
            graph = self.graph_fn(edge_index, (pos[edge_index[0]] - pos[edge_index[1]] + edge_shift).detach())
        energy, forces, _ = self.student.atom_outputs(z, pos, edge_index, edge_shift, graph=graph)
        return energy, pos.new_zeros(0, 3) if forces is None else forces


def _graph_function(student):
    """The representation's ``extra_graph`` function (dotted name), compiled with TorchScript, or None."""
    name = getattr(student.representation, "extra_graph", None)
    if name is None:
        return None
    module, function = name.rsplit(".", 1)
    try:
        return torch.jit.script(getattr(importlib.import_module(module), function))
    except Exception as exc:  # noqa: BLE001 (TorchScript raises many types; the first line says what)
        raise DeployError(f"{type(student.representation).__name__}: its extra_graph {name} does not compile with "
                          f"TorchScript ({str(exc).strip().splitlines()[0]})") from exc


def student_species(student) -> list[int]:
    """Atomic numbers the deployed file accepts: the student's training elements (``trained_elements``; every element
    1–118 for an untrained student), within a MACE student's own element list. Engines refuse any other, as
    hessdistill's own paths do (``models.elements``)."""
    known = student.trained_elements.detach().cpu().clone()
    index = getattr(student.representation, "element_index", None)
    if index is not None:
        known &= index.detach().cpu()[: len(known)] >= 0
    return torch.nonzero(known).flatten().tolist()


def _example_graph(species: list[int], sizes: tuple[int, ...], seed: int, cutoff: float, dtype, device):
    """A batch of small random clusters (one per size; atoms ~1.2 Å apart, the species cycled) as plain graph tensors
    (z, pos, edge_index, edge_shift): what a core is traced and checked on."""
    rng = np.random.default_rng(seed)
    z, pos, edges, offset = [], [], [], 0
    for k, n in enumerate(sizes):
        grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 1.2
        xyz = torch.as_tensor(grid + rng.normal(0.0, 0.1, grid.shape) + 20.0 * k, dtype=dtype, device=device)
        edge_index, _ = radius_graph(xyz, cutoff)
        z.append(torch.as_tensor([species[(k + i) % len(species)] for i in range(n)], device=device))
        pos.append(xyz)
        edges.append(edge_index + offset)
        offset += n
    edge_index = torch.cat(edges, dim=1)
    return torch.cat(z), torch.cat(pos), edge_index, torch.zeros(edge_index.shape[1], 3, dtype=dtype, device=device)


def _traced_core(student, graph_fn, species: list[int], device: torch.device):
    """The student's core traced on ``device``, checked against the eager student on a graph of other sizes."""
    core = _StudentCore(student, graph_fn)
    dtype = student.atom_refs.dtype
    example = _example_graph(species, (5, 4), 0, student.cutoff, dtype, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values: the check below is what decides
        traced = torch.jit.trace(core, example, check_trace=False)
    check = _example_graph(species, (9, 3, 6), 1, student.cutoff, dtype, device)
    try:
        same = all(want.shape == got.shape and torch.allclose(want, got, rtol=1e-5, atol=1e-6)
                   for want, got in zip(core(*check), traced(*check)))
    except RuntimeError:  # a baked size that no longer fits the tensors
        same = False
    if not same:
        raise DeployError(f"{type(student.representation).__name__}: the traced student differs from the student on "
                          f"a graph of other sizes than it was traced on (its Python code turns a size into a "
                          f"constant); it cannot be deployed by tracing")
    return traced


def deploy_student(student, path: str | Path, devices: tuple[str, ...] | None = None,
                   dtype: torch.dtype | None = None, name: str = "hessdistill student",
                   description: str = "") -> Path:
    """Write ``student`` (a ``ForceField``) as a metatomic model file at ``path`` (a ``.pt``).

    devices: device types the file runs on (cpu, cuda; default cpu, and cuda when available); dtype: the model's
    float type (default: the student's). Returns the path."""
    mta = import_metatomic()
    from hessdistill.integrations.metatomic_model import MetatomicStudent

    devices = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    unknown = [d for d in devices if d not in ("cpu", "cuda")]
    if unknown or ("cuda" in devices and not torch.cuda.is_available()):
        raise DeployError(f"devices {list(devices)}: " + (f"unknown device type(s) {unknown}; use cpu and/or cuda"
                          if unknown else "cuda needs a visible CUDA device to trace on; deploy there, or "
                          "devices=[cpu]"))
    dtype = dtype or student.atom_refs.dtype
    if dtype not in (torch.float32, torch.float64):
        raise DeployError(f"deploy dtype must be float32 or float64, got {dtype}")
    species = student_species(student)
    graph_fn = _graph_function(student)
    cores = []
    for device in devices:
        moved = copy.deepcopy(student).to(device=device, dtype=dtype).eval()  # the caller's student stays as it is
        cores.append(_traced_core(moved, graph_fn, species, torch.device(device)).cpu())
    module = MetatomicStudent(cores, list(devices), student.atom_refs.detach().cpu(), float(student.cutoff),
                              int(student.max_neighbors or 0), student.force_mode == "direct").eval()
    # units without metatomic's deprecated `quantity`: engines convert from the unit expression
    outputs = {"energy": mta.ModelOutput(unit="eV", sample_kind="system")}
    if student.force_mode == "direct":
        outputs["non_conservative_force"] = mta.ModelOutput(unit="eV/Angstrom", sample_kind="atom")
    capabilities = mta.ModelCapabilities(outputs=outputs, atomic_types=species, interaction_range=float(student.cutoff),
                                     length_unit="angstrom", supported_devices=list(devices),
                                     dtype=str(dtype).removeprefix("torch."))
    metadata = mta.ModelMetadata(name=name, description=description or (
        f"{type(student.representation).__name__} student ({student.force_mode} forces, cutoff "
        f"{student.cutoff} Å) trained by Hessian distillation with hessdistill"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mta.AtomisticModel(module, metadata, capabilities).save(str(path))
    return path


class DeployedModel(nn.Module):
    """A deployed student file with the ``energy_forces(batch)`` protocol of students and teachers (so
    ``TorchCalculator``, the torch-sim adapter and the evaluation suite accept it): the radius graph by this
    package's vesin code (batched), the file's own ``atom_outputs`` for the rest.

    device: where it runs (a device type the file was deployed for). allow_extensions: shared libraries the file
    lists that you trust (``deployed_file.load_deployed``); a file listing any other is refused. Structures with
    elements outside the file's species are refused by the calculator and the torch-sim adapter, as engines refuse
    them, unless ``allow_unseen_elements`` (``models.elements``)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu",
                 allow_extensions: Iterable[str | Path] = (), allow_unseen_elements: bool = False) -> None:
        super().__init__()
        self.model = load_deployed(path, allow_extensions).to(device)
        capabilities = self.model.capabilities()
        self.cutoff = capabilities.interaction_range
        self.species = list(capabilities.atomic_types)
        known = torch.zeros(N_ELEMENTS, dtype=torch.bool)
        known[[z for z in self.species if 0 < z < N_ELEMENTS]] = True
        self.register_buffer("trained_elements", known.to(device))
        self.source, self.allow_unseen_elements = str(path), allow_unseen_elements
        self.force_mode = "direct" if "non_conservative_force" in capabilities.outputs else "conservative"

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        """Energies (B,) eV (float64) and forces (Ntot, 3) eV/Å of a batch (z, pos, batch, ptr, cell, pbc), detached."""
        dtype = next(self.model.parameters()).dtype
        pos = batch.pos.to(dtype).detach().requires_grad_(self.force_mode == "conservative")
        edge_index, edge_shift = batch_radius_graph(batch, self.cutoff)  # the file applies its neighbour cap
        with torch.enable_grad():
            atom_energy, forces = self.model.module.atom_outputs(batch.z, pos, edge_index, edge_shift.to(pos))
            energy = torch.zeros(batch.num_graphs, dtype=torch.float64, device=pos.device).index_add(
                0, batch.batch, atom_energy)
            if self.force_mode == "conservative":
                (grad,) = torch.autograd.grad(energy.sum(), pos)
                forces = -grad
        return energy.detach(), forces.detach()
