"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Equivariant message passing with scalar s (N, F) and vector v (N, 3, F) features. Defaults follow the
Hessian-distillation paper's Table 7 (hidden 128, 4 layers, 128 radial basis functions, cutoff 12 Å on SPICE).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hessdistill.models.base import AtomFeatures, ForceField
from hessdistill.models.heads import mlp, vector_norm
from hessdistill.models.radial import cosine_cutoff, sine_rbf


class PaiNNInteraction(nn.Module):
    """Message (neighbour features × filters) then update (mixing of scalar and vector channels)."""

    def __init__(self, hidden: int, n_rbf: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.phi = mlp(hidden, hidden, 3 * hidden)
        self.filter = nn.Linear(n_rbf, 3 * hidden)
        self.mix_u = nn.Linear(hidden, hidden, bias=False)
        self.mix_v = nn.Linear(hidden, hidden, bias=False)
        self.update = mlp(2 * hidden, hidden, 3 * hidden)

    def forward(self, s: Tensor, v: Tensor, rbf: Tensor, fcut: Tensor, unit: Tensor, edge_index: Tensor):
        src, dst = edge_index
        x = self.phi(s)[src] * self.filter(rbf) * fcut[:, None]
        ds, dvv, dvs = x.split(self.hidden, dim=-1)
        dv = v[src] * dvv[:, None, :] + unit[:, :, None] * dvs[:, None, :]
        s = s + torch.zeros_like(s).index_add(0, dst, ds)
        v = v + torch.zeros_like(v).index_add(0, dst, dv)
        u, w = self.mix_u(v), self.mix_v(v)
        a_vv, a_sv, a_ss = self.update(torch.cat([s, vector_norm(w)], dim=-1)).split(self.hidden, dim=-1)
        return s + a_sv * (u * w).sum(dim=1) + a_ss, v + a_vv[:, None, :] * u


class PaiNNRepresentation(nn.Module):
    """z (N,), edge vectors r_ij (E, 3) Å, edge_index (2, E) → AtomFeatures(s (N, F), v (N, 3, F))."""

    vector_features = True

    def __init__(self, hidden_channels: int = 128, num_layers: int = 4, num_rbf: int = 128,
                 cutoff: float = 12.0) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.num_rbf = num_rbf
        self.cutoff = cutoff
        self.embedding = nn.Embedding(119, hidden_channels)
        self.layers = nn.ModuleList([PaiNNInteraction(hidden_channels, num_rbf) for _ in range(num_layers)])

    def forward(self, z: Tensor, vectors: Tensor, edge_index: Tensor) -> AtomFeatures:
        distance = vectors.norm(dim=-1)
        unit = vectors / distance[:, None]
        rbf = sine_rbf(distance, self.num_rbf, self.cutoff)
        fcut = cosine_cutoff(distance, self.cutoff)
        s = self.embedding(z)
        v = s.new_zeros(s.shape[0], 3, s.shape[1])
        for layer in self.layers:
            s, v = layer(s, v, rbf, fcut, unit, edge_index)
        return AtomFeatures(s, v)


def PaiNN(hidden_channels: int = 128, num_layers: int = 4, num_rbf: int = 128, cutoff: float = 12.0,
          max_neighbors: int | None = None, force_mode: str = "direct") -> ForceField:
    """A PaiNN student with the shared heads (direct-force head or conservative −∇U)."""
    rep = PaiNNRepresentation(hidden_channels, num_layers, num_rbf, cutoff)
    return ForceField(rep, force_mode=force_mode, cutoff=cutoff, max_neighbors=max_neighbors)
