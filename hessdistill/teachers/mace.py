"""MACE models as teachers: any mace-torch ``.model`` file (``MACETeacher``), or a foundation model by name
(MACE-OFF23, MACE-MP, MACE-OMOL: ``MACEFoundationTeacher``) through mace-torch's own loaders and cache
(``teachers.weights``).

The neighbour list and one-hot node attributes come from mace-torch's own data pipeline; our positions
tensor is substituted so the energy is differentiable w.r.t. it. Periodic cells work through MACE's shifts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from hessdistill.quiet import import_mace
from hessdistill.teachers.base import AutogradTeacher
from hessdistill.teachers.weights import load_mace_foundation

log = logging.getLogger(__name__)


def load_mace_model(path: str | Path, dtype: torch.dtype) -> torch.nn.Module:
    """Load a full pickled MACE model (as saved by mace-torch) onto the CPU in ``dtype``."""
    import_mace()  # what the pickle names, and what e3nn needs for unpickling under torch >= 2.6

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MACE model file not found: {path}")
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not hasattr(model, "atomic_numbers") or not hasattr(model, "r_max"):
        raise ValueError(f"{path} is not a MACE model (no atomic_numbers / r_max)")
    return model.to(dtype)


def uses_cuequivariance(model: torch.nn.Module) -> bool:
    """Whether any submodule comes from NVIDIA's cuEquivariance kernels (``cuequivariance*`` packages)."""
    return any(type(m).__module__.startswith("cuequivariance") for m in model.modules())


def without_cuequivariance(model: torch.nn.Module) -> torch.nn.Module:
    """An e3nn copy of a cuEquivariance-accelerated MACE model (mace-torch's own converter), else ``model``.

    The cuEquivariance kernels break under autograd + vmap, which every Hessian here needs; the e3nn model computes
    the same function with differentiable ops."""
    if not uses_cuequivariance(model):
        return model
    from mace.cli.convert_cueq_e3nn import run as cueq_to_e3nn

    log.warning("MACE model uses cuEquivariance kernels; converting it to e3nn for Hessians (autograd + vmap)")
    return cueq_to_e3nn(model, return_model=True)


class MACETeacher(AutogradTeacher):
    """A MACE model. model: a ``.model`` path or an already built mace-torch module; name: store label."""

    code_argument = "model"  # mace-torch models are pickles (torch.load with weights_only=False)

    def __init__(self, model: str | torch.nn.Module, name: str = "mace", level_of_theory: str = "unknown",
                 head: str | None = None, dtype: str = "float64") -> None:
        super().__init__()
        torch_dtype = getattr(torch, dtype)
        model = load_mace_model(model, torch_dtype) if isinstance(model, (str, Path)) else model.to(torch_dtype)
        self.model = without_cuequivariance(model).to(torch_dtype)
        self.name, self.level_of_theory = name, level_of_theory
        heads = list(getattr(self.model, "heads", None) or ["default"])
        self.head = head or heads[0]
        if self.head not in heads:
            raise ValueError(f"MACE head {self.head!r} not in model heads {heads}")
        self.heads = heads
        self.r_max = float(self.model.r_max)
        self.freeze()

    @property
    def elements(self) -> frozenset[int]:
        return frozenset(int(z) for z in self.model.atomic_numbers)

    def _mace_batch(self, batch) -> dict[str, Tensor]:
        from mace import data as mace_data
        from mace.tools import AtomicNumberTable
        from mace.tools.torch_geometric import Batch as MaceBatch

        from hessdistill.data.structures import Structure

        table = AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        items = []
        for g in range(batch.num_graphs):
            a, b = int(batch.ptr[g]), int(batch.ptr[g + 1])
            atoms = Structure(z=batch.z[a:b].cpu().numpy(), positions=batch.pos[a:b].detach().cpu().double().numpy(),
                              cell=batch.cell[g].cpu().double().numpy(), pbc=batch.pbc[g].cpu().numpy()).to_atoms()
            config = mace_data.config_from_atoms(atoms, head_name=self.head)
            items.append(mace_data.AtomicData.from_config(config, z_table=table, cutoff=self.r_max, heads=self.heads))
        return MaceBatch.from_data_list(items).to(batch.pos.device).to_dict()

    def _typed_batch(self, batch) -> dict[str, Tensor]:
        data = self._mace_batch(batch)
        for key, value in data.items():
            if torch.is_tensor(value) and value.is_floating_point():
                data[key] = value.to(self.dtype)
        return data

    def energy(self, batch) -> Tensor:
        data = self._typed_batch(batch)
        data["positions"] = batch.pos  # same atom order; keeps the graph to our positions
        out = self.model(data, training=False, compute_force=False)
        return out["energy"]

    def node_features(self, batch) -> Tensor:
        """MACE's final-layer node features (Ntot, F), the input of its last readout (n2n baseline). MACE's
        ``node_feats`` output concatenates every layer's features, the earlier ones with their l > 0 (equivariant)
        parts; the last layer's are invariant scalars and come last, so they are sliced off the end."""
        self.check_elements(batch)
        data = self._typed_batch(batch.to(self.device))
        with torch.enable_grad():  # MACE's forward asks for position gradients even when no forces are wanted
            out = self.model(data, training=False, compute_force=False)
        width = self.model.products[-1].linear.irreps_out.dim
        return out["node_feats"][:, -width:].detach()

    def element_embeddings(self) -> tuple[Tensor, Tensor]:
        """Atomic numbers (E,) and the model's learned element embeddings (E, F) (a2a baseline)."""
        z = torch.tensor([int(x) for x in self.model.atomic_numbers])
        one_hot = torch.eye(len(z), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            return z, self.model.node_embedding(one_hot).detach()


class MACEFoundationTeacher(MACETeacher):
    """A MACE foundation model by name, loaded the way mace-torch loads it (``mace_off(size)``, ``mace_mp(size)``,
    ``mace_omol(size)``): from mace-torch's cache, downloaded there on first use when the network is there.

    family: mace_off (small, medium, large), mace_mp (small, medium, large, medium-mpa-0, … : the installed
    mace-torch's names) or mace_omol (extra_large); size: the model's name in that family; model: a local ``.model``
    file to load instead (e.g. a copy for an offline machine). name: store label (None: ``<family>_<size>``).
    """

    def __init__(self, family: str = "mace_off", size: str = "medium", model: str | None = None,
                 name: str | None = None, level_of_theory: str = "unknown", head: str | None = None,
                 dtype: str = "float64") -> None:
        module = model if model is not None else load_mace_foundation(family, size)
        super().__init__(module, name=name or f"{family}_{size}", level_of_theory=level_of_theory, head=head,
                         dtype=dtype)
        self.family, self.size = family, size
