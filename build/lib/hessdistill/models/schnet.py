"""SchNet: continuous-filter convolutions on interatomic distances (Schütt et al., NeurIPS 2017; J. Chem. Phys.
2018). Invariant: atoms carry scalars only, so direct forces come from the shared edge head on the last layer's
messages. Defaults follow SchNetPack's: 128 features and filters, 6 interactions, 50 Gaussians, cutoff 5 Å.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from hessdistill.models.base import AtomFeatures, ForceField
from hessdistill.models.radial import cosine_cutoff, gaussian_rbf


class ShiftedSoftplus(nn.Module):
    """ln(1 + eˣ) − ln 2: smooth (every derivative exists, as Hessian rows of a conservative model need), 0 at 0."""

    def forward(self, x: Tensor) -> Tensor:
        return nnf.softplus(x) - math.log(2.0)


class SchNetInteraction(nn.Module):
    """cfconv: messages W(d_ij) ⊙ x_src summed onto dst, then an atom-wise residual update."""

    def __init__(self, hidden: int, n_filters: int, n_rbf: int) -> None:
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(n_rbf, n_filters), ShiftedSoftplus(), nn.Linear(n_filters, n_filters))
        self.in_to_filter = nn.Linear(hidden, n_filters, bias=False)
        self.out = nn.Sequential(nn.Linear(n_filters, hidden), ShiftedSoftplus(), nn.Linear(hidden, hidden))

    def forward(self, s: Tensor, rbf: Tensor, fcut: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """s (N, F), rbf (E, n_rbf), fcut (E,) → updated s (N, F) and the messages (E, n_filters)."""
        src, dst = edge_index
        messages = self.in_to_filter(s)[src] * self.filter(rbf) * fcut[:, None]
        aggregated = torch.zeros(s.shape[0], messages.shape[1], dtype=s.dtype,
                                 device=s.device).index_add(0, dst, messages)
        return s + self.out(aggregated), messages


class SchNetRepresentation(nn.Module):
    """z (N,), edge vectors (E, 3) Å, edge_index (2, E) → AtomFeatures(scalars (N, F), edges (E, n_filters))."""

    vector_features = False

    def __init__(self, hidden_channels: int = 128, num_filters: int = 128, num_interactions: int = 6,
                 num_rbf: int = 50, cutoff: float = 5.0) -> None:
        super().__init__()
        self.hidden_channels, self.edge_channels = hidden_channels, num_filters
        self.num_rbf, self.cutoff = num_rbf, cutoff
        self.embedding = nn.Embedding(119, hidden_channels)
        self.interactions = nn.ModuleList([SchNetInteraction(hidden_channels, num_filters, num_rbf)
                                           for _ in range(num_interactions)])

    def forward(self, z: Tensor, vectors: Tensor, edge_index: Tensor) -> AtomFeatures:
        distance = vectors.norm(dim=-1)
        rbf = gaussian_rbf(distance, self.num_rbf, self.cutoff)
        fcut = cosine_cutoff(distance, self.cutoff)
        s = self.embedding(z)
        messages = None
        for interaction in self.interactions:
            s, messages = interaction(s, rbf, fcut, edge_index)
        return AtomFeatures(s, edges=messages)


def SchNet(hidden_channels: int = 128, num_filters: int = 128, num_interactions: int = 6, num_rbf: int = 50,
           cutoff: float = 5.0, max_neighbors: int | None = None, force_mode: str = "conservative") -> ForceField:
    """A SchNet student with the shared heads (conservative −∇U by default, or the direct edge-force head)."""
    rep = SchNetRepresentation(hidden_channels, num_filters, num_interactions, num_rbf, cutoff)
    return ForceField(rep, force_mode=force_mode, cutoff=cutoff, max_neighbors=max_neighbors)
