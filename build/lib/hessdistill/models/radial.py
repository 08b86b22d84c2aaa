"""Radial pieces of the students, in one place: cutoff functions (cosine, smooth polynomial envelope) and radial bases
(sine/d for PaiNN, Gaussians for SchNet, Bessel on the envelope for GemNet and eSCN). Distances in Å."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def polynomial_envelope(x: Tensor, exponent: int = 5) -> Tensor:
    """Smooth cutoff u(x), x = d/cutoff: 1 − (p+1)(p+2)/2 xᵖ + p(p+2) xᵖ⁺¹ − p(p+1)/2 xᵖ⁺² below 1, else 0."""
    p = exponent
    u = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return torch.where(x < 1, u, torch.zeros_like(u))


def sine_rbf(distance: Tensor, n_rbf: int, cutoff: float) -> Tensor:
    """sin(nπd/rc)/d, n = 1..n_rbf: (E,) Å → (E, n_rbf)."""
    n = torch.arange(1, n_rbf + 1, device=distance.device, dtype=distance.dtype)
    return torch.sin(n * math.pi * distance[:, None] / cutoff) / distance[:, None]


def cosine_cutoff(distance: Tensor, cutoff: float) -> Tensor:
    """½(cos(πd/rc) + 1) inside the cutoff, 0 outside: (E,) → (E,)."""
    return 0.5 * (torch.cos(math.pi * distance / cutoff) + 1.0) * (distance < cutoff).to(distance.dtype)


def gaussian_rbf(distance: Tensor, n_rbf: int, cutoff: float) -> Tensor:
    """exp(−(d − μ_k)² / 2Δ²) with n_rbf centres μ_k evenly from 0 to cutoff, Δ their spacing: (E,) Å → (E, n_rbf)."""
    centres = torch.linspace(0.0, cutoff, n_rbf, device=distance.device, dtype=distance.dtype)
    width = cutoff / max(n_rbf - 1, 1)
    return torch.exp(-0.5 * ((distance[:, None] - centres) / width) ** 2)


class RadialBasis(nn.Module):
    """√(2/c) sin(nπd/c)/d · u(d/c), n = 1…num_radial: (E,) Å → (E, num_radial)."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int) -> None:
        super().__init__()
        self.cutoff, self.exponent = cutoff, envelope_exponent
        self.register_buffer("n", torch.arange(1, num_radial + 1, dtype=torch.float64))

    def forward(self, d: Tensor) -> Tensor:
        x = (d / self.cutoff)[:, None]
        n = self.n.to(d.dtype)
        return (math.sqrt(2 / self.cutoff) * torch.sin(n * math.pi * x) / d[:, None]
                * polynomial_envelope(x, self.exponent))
