"""A small MACE as an equivariant student, built from mace-torch's own model class (higher-order equivariant
messages, l ≤ max_ell, body order correlation + 1), trained from scratch like any other student.

Our graph goes in through MACE's public forward: with all positions at zero and edge shifts equal to our edge
vectors (r_dst − r_src in MACE's sender → receiver convention), MACE's edge vectors *are* ours, so the gradient
path from the student's outputs back to our positions is intact (Hessian rows, conservative forces). The last
layer keeps its vectors (``keep_last_layer_irreps``): its F×0e scalars feed the energy head, its F×1o vectors the
gated equivariant direct-force head. The element set is fixed when the student is built (``atomic_numbers``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from hessdistill.models.base import AtomFeatures, ForceField
from hessdistill.quiet import import_mace

# SPICE's elements: H Li C N O F Na Mg P S Cl K Ca Br I
SPICE_ELEMENTS = (1, 3, 6, 7, 8, 9, 11, 12, 15, 16, 17, 19, 20, 35, 53)


class MACERepresentation(nn.Module):
    """z (N,), edge vectors (E, 3) Å, edge_index (2, E) → AtomFeatures(scalars (N, F), vectors (N, 3, F))."""

    vector_features = True

    def __init__(self, atomic_numbers=SPICE_ELEMENTS, hidden_channels: int = 32, max_ell: int = 2,
                 num_interactions: int = 2, correlation: int = 3, num_bessel: int = 8, cutoff: float = 5.0,
                 avg_num_neighbors: float = 10.0, radial_mlp: tuple[int, ...] = (32, 32)) -> None:
        super().__init__()
        modules = import_mace()  # first: mace sets what e3nn needs to import under torch >= 2.6
        from e3nn import o3

        self.hidden_channels = hidden_channels
        numbers = sorted(int(z) for z in atomic_numbers)
        index = torch.full((119,), -1, dtype=torch.long)
        index[numbers] = torch.arange(len(numbers))
        self.register_buffer("element_index", index)
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        self.model = modules.MACE(
            r_max=cutoff, num_bessel=num_bessel, num_polynomial_cutoff=5, max_ell=max_ell, interaction_cls=block,
            interaction_cls_first=block, num_interactions=num_interactions, num_elements=len(numbers),
            hidden_irreps=o3.Irreps(f"{hidden_channels}x0e+{hidden_channels}x1o"), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(numbers)), avg_num_neighbors=avg_num_neighbors, atomic_numbers=numbers,
            correlation=correlation, gate=torch.nn.functional.silu, radial_MLP=list(radial_mlp),
            keep_last_layer_irreps=True)

    def forward(self, z: Tensor, vectors: Tensor, edge_index: Tensor) -> AtomFeatures:
        index = self.element_index[z]
        if bool((index < 0).any()):
            raise ValueError(f"MACE student has no embedding for atomic number(s) "
                             f"{sorted(set(z[index < 0].tolist()))}; "
                             f"list them in student.atomic_numbers")
        n, f = z.shape[0], self.hidden_channels
        data = {"positions": vectors.new_zeros(n, 3),
                "node_attrs": nn.functional.one_hot(index, len(self.model.atomic_numbers)).to(vectors.dtype),
                "edge_index": edge_index, "shifts": -vectors, "unit_shifts": torch.zeros_like(vectors),
                "cell": vectors.new_zeros(1, 3, 3), "batch": torch.zeros_like(z), "ptr": z.new_tensor([0, n]),
                "head": z.new_zeros(1)}
        out = self.model(data, training=True, compute_force=False)  # training: keep graphs for higher derivatives
        last = out["node_feats"][:, -4 * f:]  # the last layer: F×0e then F×1o (mul-major, x y z)
        return AtomFeatures(last[:, :f], last[:, f:].reshape(n, f, 3).transpose(1, 2))


def MACEStudent(atomic_numbers=SPICE_ELEMENTS, hidden_channels: int = 32, max_ell: int = 2,
                num_interactions: int = 2, correlation: int = 3, num_bessel: int = 8, cutoff: float = 5.0,
                avg_num_neighbors: float = 10.0, radial_mlp: tuple[int, ...] = (32, 32),
                max_neighbors: int | None = None,
                force_mode: str = "conservative") -> ForceField:
    """A small MACE student (conservative −∇U by default, or the gated direct-force head on its l = 1 features)."""
    rep = MACERepresentation(atomic_numbers, hidden_channels, max_ell, num_interactions, correlation, num_bessel,
                             cutoff, avg_num_neighbors, radial_mlp)
    return ForceField(rep, force_mode=force_mode, cutoff=cutoff, max_neighbors=max_neighbors)
