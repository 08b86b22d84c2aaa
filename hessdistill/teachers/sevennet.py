"""SevenNet-0 (Park et al. 2024; MPtrj-trained materials foundation model, MIT) as a teacher, through autograd.

Its checkpoints ship inside the ``sevenn`` wheel, so it runs offline. sevenn ≥ 0.11 requires e3nn ≥ 0.5 while
mace-torch pins e3nn 0.4.4; sevenn 0.10.4, the last release without that requirement, runs on e3nn 0.4.4 and gives
the same energies and forces as sevenn 0.13 on e3nn 0.5.9 (to float32 round-off; checked on 20 GeSbTe cells and a
molecule), hence the extra ``hessdistill[materials]`` pins ``sevenn>=0.10.4,<0.11``.

The graph (neighbour list, cell shifts) comes from sevenn's own pipeline; SevenNet-0 reads precomputed edge vectors,
so they are recomputed from our positions, r_j − r_i + S·L, and its energy is a differentiable function of them (its
own force module, a gradient that frees the graph, is skipped). SevenNet computes in float32; molecules work (no
cell), as with its ASE calculator.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch

from hessdistill.teachers.base import AutogradTeacher

FORCE_MODULE = "force_output"  # SevenNet's autograd force/stress module, the last of its sequence


def load_sevennet(model: str):
    """SevenNet model and config from a checkpoint file or a pretrained name of the sevenn wheel (e.g. 7net-0)."""
    try:
        import mace  # noqa: F401  (before e3nn: sets what e3nn 0.4.4 needs to unpickle its constants under torch >= 2.6)
        from sevenn import util
    except ImportError as exc:
        raise ImportError("the SevenNet teacher needs sevenn: pip install 'hessdistill[materials]'") from exc
    path = Path(model).expanduser()
    if not path.is_file():
        if any(sep in model for sep in ("/", "\\")) or model.endswith(".pth"):
            raise FileNotFoundError(f"SevenNet checkpoint not found: {path}")
        path = Path(util.pretrained_name_to_path(model))
    return util.model_from_checkpoint(str(path))


class SevenNetTeacher(AutogradTeacher):
    """model: a pretrained name of the sevenn wheel (7net-0, 7net-0_22May2024, 7net-l3i5) or a SevenNet checkpoint
    file; name: store label."""

    level_of_theory = "PBE/PBE+U (MPtrj), SevenNet"
    code_argument = "model"  # a checkpoint file is unpickled: a run folder's record never builds it

    def __init__(self, model: str = "7net-0", name: str = "sevennet") -> None:
        super().__init__()
        self.model, config = load_sevennet(model)
        self.model.set_is_batch_data(True)
        self.cutoff = float(config["cutoff"])
        self.name = name
        self.freeze()

    @property
    def elements(self) -> frozenset[int]:
        return frozenset(int(z) for z in self.model.type_map)

    def _graphs(self, batch) -> dict:
        """sevenn's batched graph of ``batch`` (neighbour list at the current positions) as a dict of tensors."""
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        from hessdistill.data.structures import Structure

        graphs = []
        for g in range(batch.num_graphs):
            a, b = int(batch.ptr[g]), int(batch.ptr[g + 1])
            atoms = Structure(z=batch.z[a:b].cpu().numpy(), positions=batch.pos[a:b].detach().cpu().double().numpy(),
                              cell=batch.cell[g].cpu().double().numpy(), pbc=batch.pbc[g].cpu().numpy()).to_atoms()
            graph = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff))
            del graph[KEY.INFO]
            graphs.append(graph)
        return Batch.from_data_list(graphs).to(batch.pos.device).to_dict()

    def energy(self, batch) -> Tensor:
        """(B,) eV, differentiable in ``batch.pos`` through the edge vectors r_j − r_i + S·L (Å)."""
        import sevenn._keys as KEY

        data = self._graphs(batch)
        src, dst = data[KEY.EDGE_IDX]
        cell = data[KEY.CELL].view(-1, 3, 3).to(batch.pos.dtype)
        shift = data[KEY.CELL_SHIFT].to(batch.pos.dtype)
        data[KEY.EDGE_VEC] = batch.pos[dst] - batch.pos[src] + torch.einsum("ni,nij->nj", shift,
                                                                            cell[data[KEY.BATCH][src]])
        data[KEY.NODE_FEATURE] = self.model._atomic_numbers_to_onehot(data[KEY.ATOMIC_NUMBERS])
        for name, module in self.model._modules.items():
            if name != FORCE_MODULE:
                data = module(data)
        return data[KEY.PRED_TOTAL_ENERGY]
