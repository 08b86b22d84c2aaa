"""Radial pieces shared by students: a smooth polynomial cutoff envelope and the Bessel radial basis built on it."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def polynomial_envelope(x: Tensor, exponent: int = 5) -> Tensor:
    """Smooth cutoff u(x), x = d/cutoff: 1 − (p+1)(p+2)/2 xᵖ + p(p+2) xᵖ⁺¹ − p(p+1)/2 xᵖ⁺² below 1, else 0."""
    p = exponent
    u = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return torch.where(x < 1, u, torch.zeros_like(u))


class RadialBasis(nn.Module):
    """√(2/c) sin(nπd/c)/d · u(d/c), n = 1…num_radial: (E,) Å → (E, num_radial)."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int) -> None:
        super().__init__()
        self.cutoff, self.exponent = cutoff, envelope_exponent
        self.register_buffer("n", torch.arange(1, num_radial + 1, dtype=torch.float64))

    def forward(self, d: Tensor) -> Tensor:
        x = (d / self.cutoff)[:, None]
        n = self.n.to(d.dtype)
        return math.sqrt(2 / self.cutoff) * torch.sin(n * math.pi * x) / d[:, None] * polynomial_envelope(x, self.exponent)
