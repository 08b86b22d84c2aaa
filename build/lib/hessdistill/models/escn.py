"""eSCN-style equivariant student (Passaro & Zitnick, ICML 2023): l ≤ 2 features, messages by SO(2) convolutions
in each edge's own frame.

Features x (N, 9, C) hold, per channel, real coefficients of degree l = 0 (index 0), l = 1 (1–3: the Cartesian
x, y, z) and l = 2 (4–8: a Frobenius-orthonormal basis B of symmetric traceless 3×3 matrices). A rotation R acts
as D(R) = 1 ⊕ R ⊕ D₂(R) with D₂(R)_ab = tr(B_a R B_b Rᵀ): no spherical-harmonic library, no Euler angles.

For a message along edge e, both atoms' features are rotated into a frame where the edge points along y
(``edge_rotations``). There, the only rotations left are those about y, under which coefficients pair up by
order m: m = 0 (l0, l1 y, l2 ∝ 2y² − x² − z²) are invariant, and the (cos, sin) pairs m = 1 (l1: z, x;
l2: yz, xy) and m = 2 (l2: z² − x², xz) turn by mθ. An SO(2) convolution mixes coefficients of the same m across
l and channels with complex-linear maps (W₁ + iW₂), which commute with those rotations: the full l ≤ 2 tensor
product costs O(L³) per edge, this O(L²) — eSCN's trick. The result is rotated back, cut off smoothly and summed
onto the receiving atom. Each edge's frame (the third axis from the coordinate axis least aligned with the
edge) is smooth wherever it is used, so every derivative is finite; equivariance makes the output independent
of that choice (tested).

Differences from the reference eSCN: a gate instead of the S² grid activation, an RMS norm per degree instead of
its layer norm, l_max = m_max = 2. Direct forces come from the l = 1 channels through the shared gated head;
``force_mode="conservative"`` gives −∇U. Defaults: 4 layers of 64 channels with 50 in the edge convolutions,
0.94M parameters with the direct head (the paper's eSCN student on MD22: l = 2, 0.94M).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hessdistill.models.base import AtomFeatures, ForceField
from hessdistill.models.heads import mlp
from hessdistill.models.radial import RadialBasis, polynomial_envelope

L1, L2 = slice(1, 4), slice(4, 9)  # degree-1 and degree-2 coefficients in the 9 of a feature
M0 = [0, 2, 6]  # in the edge frame: order m = 0 (l0; l1 y; l2 2y² − x² − z²)
M1_COS, M1_SIN = [3, 7], [1, 8]  # m = 1 pairs: (l1 z, l1 x), (l2 yz, l2 xy)
M2_COS, M2_SIN = [4], [5]  # m = 2 pair: (l2 z² − x², l2 xz)


def l2_basis(dtype: torch.dtype = torch.float64) -> Tensor:
    """(5, 3, 3): (z²−x²)/√2, (xz+zx)/√2, (2y²−x²−z²)/√6, (yz+zy)/√2, (xy+yx)/√2 — orthonormal under tr(AB)."""
    b = torch.zeros(5, 3, 3, dtype=torch.float64)
    b[0, 2, 2], b[0, 0, 0] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    b[1, 0, 2] = b[1, 2, 0] = 1 / math.sqrt(2)
    b[2] = torch.diag(torch.tensor([-1.0, 2.0, -1.0], dtype=torch.float64)) / math.sqrt(6)
    b[3, 1, 2] = b[3, 2, 1] = 1 / math.sqrt(2)
    b[4, 0, 1] = b[4, 1, 0] = 1 / math.sqrt(2)
    return b.to(dtype)


def wigner(rotation: Tensor, basis: Tensor) -> Tensor:
    """D(R) for l ≤ 2 in this file's basis: (E, 3, 3) rotations → (E, 9, 9) block-diagonal 1 ⊕ R ⊕ D₂(R)."""
    turned = rotation[:, None] @ basis @ rotation.transpose(1, 2)[:, None]  # (E, 5, 3, 3): R B_b Rᵀ
    d2 = (turned.flatten(2) @ basis.flatten(1).T).transpose(1, 2)  # (E, 5, 5): tr(B_a R B_b Rᵀ), B symmetric
    d = rotation.new_zeros(rotation.shape[0], 9, 9)
    d[:, 0, 0] = 1.0
    d[:, L1, L1] = rotation
    d[:, L2, L2] = d2
    return d


def edge_rotations(vectors: Tensor) -> Tensor:
    """(E, 3) edge vectors → (E, 3, 3) rotations R with R r̂ = ŷ: rows (a, r̂, a × r̂), a ⟂ r̂ built from the coordinate
    axis least aligned with r̂ (|a| ≥ √(2/3) before normalising, so the frame has no singularity)."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    helper = torch.zeros_like(unit).scatter_(1, unit.detach().abs().argmin(dim=1, keepdim=True), 1.0)
    a = torch.linalg.cross(helper, unit)
    a = a / a.norm(dim=-1, keepdim=True)
    return torch.stack([a, unit, torch.linalg.cross(a, unit)], dim=1)


class SO2Linear(nn.Module):
    """Linear map of edge-frame features (E, 9, c_in) → (E, 9, c_out) that commutes with rotations about y: a
    real matrix on m = 0, complex multiplication (W₁ + iW₂) on each m = 1 and m = 2 (cos, sin) pair."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_out = c_out
        self.m0 = nn.Linear(3 * c_in, 3 * c_out)
        self.m1 = nn.Linear(2 * c_in, 4 * c_out, bias=False)  # W₁ and W₂ stacked
        self.m2 = nn.Linear(c_in, 2 * c_out, bias=False)

    @staticmethod
    def _pair(linear: nn.Linear, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        w1c, w2c = linear(cos.flatten(1)).chunk(2, dim=-1)
        w1s, w2s = linear(sin.flatten(1)).chunk(2, dim=-1)
        return w1c - w2s, w2c + w1s

    def forward(self, x: Tensor) -> Tensor:
        e, c = x.shape[0], self.c_out
        out = x.new_zeros(e, 9, c)
        out[:, M0] = self.m0(x[:, M0].flatten(1)).view(e, 3, c)
        cos, sin = self._pair(self.m1, x[:, M1_COS], x[:, M1_SIN])
        out[:, M1_COS], out[:, M1_SIN] = cos.view(e, 2, c), sin.view(e, 2, c)
        cos, sin = self._pair(self.m2, x[:, M2_COS], x[:, M2_SIN])
        out[:, M2_COS], out[:, M2_SIN] = cos.view(e, 1, c), sin.view(e, 1, c)
        return out


class Gate(nn.Module):
    """Equivariant nonlinearity on (…, 9, C): SiLU on the l = 0 channels, l = 1 and l = 2 channels scaled by
    sigmoid gates computed from the l = 0 channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gates = nn.Linear(channels, 2 * channels)

    def forward(self, x: Tensor) -> Tensor:
        g1, g2 = torch.sigmoid(self.gates(x[:, 0])).unsqueeze(1).chunk(2, dim=-1)
        return torch.cat([nn.functional.silu(x[:, :1]), x[:, L1] * g1, x[:, L2] * g2], dim=1)


def rms_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Per atom and degree, divide (…, 9, C) by the RMS over the degree's coefficients and channels (l = 0 is also
    centred): rotation-invariant, smooth (eps inside the root)."""
    s = x[:, :1] - x[:, :1].mean(dim=-1, keepdim=True)
    parts = [s, x[:, L1], x[:, L2]]
    return torch.cat([p / torch.sqrt(p.square().mean(dim=(1, 2), keepdim=True) + eps) for p in parts], dim=1)


class ESCNLayer(nn.Module):
    """Message: [x_src, x_dst] rotated into the edge frame, radially filtered, SO(2) conv → gate → SO(2) conv,
    rotated back, times the cutoff envelope, summed onto dst and scaled by 1/avg_num_neighbors. Then a residual
    per-atom update (degree-wise channel mixing and a gate)."""

    def __init__(self, channels: int, hidden: int, num_radial: int, avg_num_neighbors: float) -> None:
        super().__init__()
        self.radial = mlp(num_radial, hidden, 3 * 2 * channels)  # a filter per order m on the input channels
        self.conv1, self.gate, self.conv2 = SO2Linear(2 * channels, hidden), Gate(hidden), SO2Linear(hidden, channels)
        self.mix0, self.mix1, self.mix2 = (nn.Linear(channels, channels), nn.Linear(channels, channels, bias=False),
                                           nn.Linear(channels, channels, bias=False))
        self.update_gate = Gate(channels)
        self.inv_neighbors = 1.0 / avg_num_neighbors

    def forward(self, x: Tensor, frame: Tensor, rbf: Tensor, envelope: Tensor, edge_index: Tensor) -> Tensor:
        """x (N, 9, C); frame (E, 9, 9): D of each edge's rotation; rbf (E, num_radial); envelope (E,)."""
        src, dst = edge_index
        h = rms_norm(x)
        pair = torch.cat([h[src], h[dst]], dim=-1)  # (E, 9, 2C)
        local = torch.bmm(frame, pair)  # into the edge frame
        f0, f1, f2 = self.radial(rbf).unsqueeze(1).chunk(3, dim=-1)
        order_filter = torch.cat([f0, f1, f0, f1, f2, f2, f0, f1, f1], dim=1)  # by order m of coefficients 0–8
        local = self.conv2(self.gate(self.conv1(local * order_filter)))
        message = torch.bmm(frame.transpose(1, 2), local) * envelope[:, None, None]
        x = x + self.inv_neighbors * torch.zeros_like(x).index_add(0, dst, message)
        h = rms_norm(x)
        mixed = torch.cat([self.mix0(h[:, :1]), self.mix1(h[:, L1]), self.mix2(h[:, L2])], dim=1)
        return x + self.update_gate(mixed)


class ESCNRepresentation(nn.Module):
    """z (N,), edge vectors (E, 3) Å, edge_index (2, E) → AtomFeatures(scalars (N, C), vectors (N, 3, C)): the l = 0
    and l = 1 channels after the last layer."""

    vector_features = True

    def __init__(self, channels: int = 64, hidden_channels: int = 50, num_layers: int = 4, num_radial: int = 8,
                 cutoff: float = 5.0, envelope_exponent: int = 5, avg_num_neighbors: float = 20.0) -> None:
        super().__init__()
        self.hidden_channels, self.cutoff, self.exponent = channels, cutoff, envelope_exponent
        self.embedding = nn.Embedding(119, channels)
        self.radial = RadialBasis(num_radial, cutoff, envelope_exponent)
        self.register_buffer("l2_basis", l2_basis())
        self.layers = nn.ModuleList([ESCNLayer(channels, hidden_channels, num_radial, avg_num_neighbors)
                                     for _ in range(num_layers)])

    def forward(self, z: Tensor, vectors: Tensor, edge_index: Tensor) -> AtomFeatures:
        d = vectors.norm(dim=-1)
        frame = wigner(edge_rotations(vectors), self.l2_basis.to(vectors.dtype))
        rbf, envelope = self.radial(d), polynomial_envelope(d / self.cutoff, self.exponent)
        s = self.embedding(z)
        x = torch.cat([s.unsqueeze(1), s.new_zeros(s.shape[0], 8, s.shape[1])], dim=1)
        for layer in self.layers:
            x = layer(x, frame, rbf, envelope, edge_index)
        return AtomFeatures(x[:, 0], x[:, L1])


def ESCN(channels: int = 64, hidden_channels: int = 50, num_layers: int = 4, num_radial: int = 8,
         cutoff: float = 5.0, envelope_exponent: int = 5, avg_num_neighbors: float = 20.0,
         max_neighbors: int | None = None,
         force_mode: str = "direct") -> ForceField:
    """An eSCN-style student with the shared heads (direct: the gated head on its l = 1 channels; or −∇U)."""
    rep = ESCNRepresentation(channels, hidden_channels, num_layers, num_radial, cutoff, envelope_exponent,
                             avg_num_neighbors)
    return ForceField(rep, force_mode=force_mode, cutoff=cutoff, max_neighbors=max_neighbors)
