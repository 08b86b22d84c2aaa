"""Building blocks shared by the students' representations and the ``ForceField`` heads: MLPs, smooth vector norms,
gated equivariant blocks, and the a2a baseline's projected element embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


def vector_norm(v: Tensor, eps: float = 1e-8) -> Tensor:
    """‖v‖ over the Cartesian axis of (N, 3, F) → (N, F), smooth at v = 0 so every derivative stays finite."""
    return torch.sqrt((v * v).sum(dim=1) + eps)


class GatedEquivariantBlock(nn.Module):
    """Mixes scalars (N, F_in) and vectors (N, 3, F_in) into (N, F_out), (N, 3, F_out) (PaiNN, Schütt 2021)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.mix_a = nn.Linear(n_in, n_out, bias=False)
        self.mix_b = nn.Linear(n_in, n_out, bias=False)
        self.update = mlp(n_in + n_out, n_in, 2 * n_out)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        va, vb = self.mix_a(v), self.mix_b(v)
        s_out, gate = self.update(torch.cat([s, vector_norm(vb)], dim=-1)).chunk(2, dim=-1)
        return s_out, gate.unsqueeze(1) * va


class ProjectedEmbedding(nn.Module):
    """a2a baseline: element embeddings h_S(z) = P h_T(z), the teacher's (frozen) table through a learned linear
    projection P (F_t → F_s). Elements the teacher has no embedding for map to zero.

    z: (E,) atomic numbers of the teacher's table; table: (E, F_t); n_out: the student's embedding size F_s.
    """

    def __init__(self, z: Tensor, table: Tensor, n_out: int) -> None:
        super().__init__()
        full = torch.zeros(119, table.shape[1], dtype=table.dtype)
        full[torch.as_tensor(z, dtype=torch.long)] = torch.as_tensor(table)
        self.register_buffer("teacher_table", full)
        self.register_buffer(
            "known", torch.zeros(119, dtype=torch.bool).index_fill(0, torch.as_tensor(z, dtype=torch.long), True))
        self.projection = nn.Linear(table.shape[1], n_out, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        if not bool(self.known[z].all()):
            missing = sorted(set(z[~self.known[z]].tolist()))
            raise ValueError(f"a2a: the teacher has no element embedding for atomic number(s) {missing}")
        return self.projection(self.teacher_table[z].to(self.projection.weight.dtype))
