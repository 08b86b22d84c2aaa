"""Shared fixtures: small molecules, PyG batches, tiny students, the ANI-1x teacher and a tiny labelled store.

Units throughout: eV, Å, eV/Å, Hessians eV/Å². Everything written goes to pytest's tmp paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch_geometric.data import Batch

from hessdistill.data.store import HessianStore, write_structures
from hessdistill.data.structures import Structure

# The models under test are tiny: intra-op thread pools only add overhead, and on a busy 2-core machine
# OpenMP barriers made single tiny backwards ~300x slower. One thread keeps the suite fast and predictable.
torch.set_num_threads(1)


def pytest_configure(config):
    # Lightning's own use of a deprecated torch pytree API; nothing the project can act on
    config.addinivalue_line("filterwarnings", "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")


SHARED = Path(__file__).resolve().parents[2] / "shared"
STORE_MOLECULES = ("H2O", "NH3", "CH4", "CH3OH")


def shared_file(relative: str) -> Path:
    """A file under ../shared/, or skip the calling test (the suite must pass without ../shared/)."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/{relative}, which is absent on this machine")
    return path


def rattled(name: str, seed: int = 0, stdev: float = 0.05):
    """An ase.build.molecule displaced by Gaussian noise (Å): off-equilibrium, no accidental symmetry."""
    atoms = molecule(name)
    atoms.rattle(stdev=stdev, seed=seed)
    return atoms


def make_batch(atoms_list, dtype: torch.dtype = torch.float64) -> Batch:
    """A PyG Batch of ASE Atoms through the project's own Structure → Data conversion."""
    return Batch.from_data_list([Structure.from_atoms(a).to_data(dtype) for a in atoms_list])


def tiny_painn(force_mode: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A small random-weight PaiNN student (hidden 16, 2 layers, 8 RBF, cutoff 4 Å)."""
    from hessdistill.models.painn import PaiNN

    torch.manual_seed(seed)
    return PaiNN(hidden_channels=16, num_layers=2, num_rbf=8, cutoff=4.0, force_mode=force_mode).to(dtype)


def teacher_lane_rows(hessians: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Full per-structure Hessians [(3N_i, 3N_i)] and rows (B, s) → teacher rows in lane layout (s, Ntot, 3)."""
    return torch.cat([h[r].view(len(r), -1, 3) for h, r in zip(hessians, rows)], dim=1)


def compose_config(name: str, overrides=()):
    """A config of conf/ composed as the command ``name`` would (Hydra's compose API, no run directory)."""
    from hydra import compose, initialize_config_dir

    from hessdistill.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def precompute_config(store, *overrides):
    """``hessdistill-precompute``'s config for the store at ``store`` with further overrides."""
    return compose_config("precompute", [f"subset.store={store}", *overrides])


def distill_terms(distill: str = "hessian", rows: int = 2, **weights) -> dict:
    """The loss terms of ``conf/distill/<distill>.yaml`` with ``rows`` Hessian rows and the given ``weights.<name>``
    (the others as configured), as plain containers for ``DistillModule(terms=...)``."""
    from omegaconf import OmegaConf

    cfg = compose_config("train", [f"distill={distill}", f"rows={rows}",
                                   *(f"weights.{k}={v}" for k, v in weights.items())])
    return OmegaConf.to_container(cfg.distill.terms, resolve=True)


def tiny_mace(seed: int = 0):
    """A small random-weight mace-torch model (H C N O, r_max 4 Å, l ≤ 2, 8 channels), a stand-in teacher."""
    import mace  # noqa: F401  (must be imported before e3nn)
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=np.zeros(4), avg_num_neighbors=3.0,
        atomic_numbers=[1, 6, 7, 8], correlation=2, gate=torch.nn.functional.silu,
    )


def label_with(teacher, atoms_list, source: str = "test") -> list[Structure]:
    """Structures labelled with a teacher's energy (eV) and forces (eV/Å)."""
    structures = []
    for k, atoms in enumerate(atoms_list):
        energy, forces = teacher.energy_forces(make_batch([atoms], teacher.dtype))
        s = Structure.from_atoms(atoms, source=f"{source}[{k}]")
        s.energy, s.forces = float(energy.detach()[0]), forces.detach().double().numpy()
        structures.append(s)
    return structures


def write_labelled_store(path: Path, teacher, names=STORE_MOLECULES, per_molecule: int = 4, seed: int = 0,
                         stdev: float = 0.08) -> Path:
    """Write a tiny store of rattled molecules labelled by ``teacher`` and precompute its Hessians."""
    from hessdistill.teacher_step.run import precompute_teacher

    atoms_list = []
    for k, name in enumerate(names):
        for r in range(per_molecule):
            atoms = rattled(name, seed=seed + 100 * k + r, stdev=stdev)
            atoms.info["molecule"] = name
            atoms_list.append(atoms)
    write_structures(path, label_with(teacher, atoms_list, source=str(path)))
    store = HessianStore(path, mode="a")
    try:
        result = precompute_teacher(store, teacher, batch_size=8, strategy="vmap", progress=False)
    finally:
        store.close()
    assert result["computed"] == len(atoms_list)
    return path


class WrappedTeacher(torch.nn.Module):
    """A teacher seen through a wrapper (``inner``): every attribute not set on the wrapper is the teacher's, so a
    subclass overrides only the calls it fakes (e.g. CUDA out-of-memory errors on a CPU)."""

    def __init__(self, teacher) -> None:
        super().__init__()
        self.inner = teacher

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.fixture(scope="session")
def ani_teacher():
    """ANI-1x (8-model ensemble, H C N O), float64; weights ship in the torchani wheel."""
    from hessdistill.teachers.ani import ANITeacher

    return ANITeacher()


@pytest.fixture(scope="session")
def labelled_store(tmp_path_factory, ani_teacher) -> Path:
    """16 structures (4 molecules × 4 rattles) with ANI-1x labels and ANI-1x Hessians as teacher "ani1x".

    Session-scoped and read-only for tests: open it with ``HessianStore(path)`` (mode "r") only.
    """
    path = tmp_path_factory.mktemp("store") / "tiny.h5"
    return write_labelled_store(path, ani_teacher)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


class DeviceRecordingTeacher(torch.nn.Module):
    """ANI-1x that records where it is moved (``moves``) and where each batch it computes lives (``batches``):
    a test of an entry point's ``device`` setting fails if the entry point never moves the teacher there."""

    moves: list = []
    batches: list = []

    def __new__(cls, *args, **kwargs):
        from hessdistill.teachers.ani import ANITeacher

        class Recording(ANITeacher):
            def to(self, *a, **k):
                device = a[0] if a and isinstance(a[0], (str, torch.device)) else k.get("device")
                if device is not None:  # a move, not only a dtype cast
                    DeviceRecordingTeacher.moves.append(torch.device(device))
                return super().to(*a, **k)

            def energy(self, batch):
                DeviceRecordingTeacher.batches.append(batch.pos.device)
                return super().energy(batch)

        return Recording(*args, **kwargs)
