"""GemNet-T / GemNet-dT: directional message passing on edges with triplet (angle) interactions (Gasteiger,
Becker, Günnemann, NeurIPS 2021). One network: GemNet-T takes conservative forces −∇U, GemNet-dT the shared
direct edge-force head (``force_mode``). Defaults are the Hessian-distillation paper's (Table 7): 4 blocks,
atom/edge embeddings 64, triplet 32, rbf/cbf 16, bilinear 64, 7 spherical and 6 radial basis functions,
polynomial envelope exponent 5, cutoff 5 Å, at most 50 neighbours; with one residual layer per output block the
student has 0.65M parameters (paper: ~0.67M).

Edges are directed: edge e = (src → dst) carries the message m_e and the vector r_src − r_dst. A triplet
(k → j → i) joins an incoming edge kj to an outgoing edge ji (k ≠ i, periodic images told apart by their vectors);
its basis is the spherical Bessel function of d_kj times the m = 0 spherical harmonic of the angle at j.
Triplets and reverse edges are rebuilt from the graph in every forward pass (index arithmetic, no gradients).
Each block's output (atom and edge features) is summed into the features handed to the shared heads.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from hessdistill.models.base import AtomFeatures, ForceField
from hessdistill.models.radial import RadialBasis, polynomial_envelope

INV_SQRT2 = 1.0 / math.sqrt(2.0)


# ---- bases ---------------------------------------------------------------------------------------------------
def spherical_bessel(l_max: int, x: Tensor) -> Tensor:
    """j_0 … j_{l_max}(x) by upward recursion: (…,) → (…, l_max + 1). Stable for the x ≳ 1 used here (the first
    zero of j_l for l ≥ 1 exceeds π, and distances stay ≳ 0.1 of the cutoff); evaluate in float64."""
    j = [torch.sin(x) / x]
    if l_max >= 1:
        j.append(torch.sin(x) / x**2 - torch.cos(x) / x)
    for l in range(1, l_max):
        j.append((2 * l + 1) / x * j[l] - j[l - 1])
    return torch.stack(j, dim=-1)


def spherical_bessel_zeros(l_max: int, n: int) -> np.ndarray:
    """(l_max + 1, n): the first n positive zeros z_ln of j_l (zeros of j_l interlace those of j_{l−1})."""
    from scipy.optimize import brentq
    from scipy.special import spherical_jn

    zeros = np.zeros((l_max + 1, n + l_max))
    zeros[0] = np.arange(1, n + l_max + 1) * np.pi
    for l in range(1, l_max + 1):
        for k in range(n + l_max - l):
            zeros[l, k] = brentq(lambda x: spherical_jn(l, x), zeros[l - 1, k], zeros[l - 1, k + 1])
    return zeros[:, :n]


class SphericalBasis(nn.Module):
    """Triplet basis: radial part N_ln j_l(z_ln d_kj / c) u(d_kj / c) per incoming edge, (E, L, R), and the angular
    part √((2l+1)/4π) P_l(cos θ_kji) per triplet, (T, L); their product over a triplet is GemNet's cbf."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int) -> None:
        super().__init__()
        self.num_spherical, self.cutoff, self.exponent = num_spherical, cutoff, envelope_exponent
        zeros = spherical_bessel_zeros(num_spherical - 1, num_radial)
        from scipy.special import spherical_jn

        norm = np.sqrt(2 / cutoff**3) / np.abs(np.stack([spherical_jn(l + 1, zeros[l]) for l in range(num_spherical)]))
        self.register_buffer("zeros", torch.as_tensor(zeros))
        self.register_buffer("norm", torch.as_tensor(norm))
        self.register_buffer("sph_norm",
                             torch.sqrt((2 * torch.arange(num_spherical, dtype=torch.float64) + 1) / (4 * math.pi)))

    def radial(self, d: Tensor) -> Tensor:
        x = (d.double() / self.cutoff)[:, None, None]  # (E, 1, 1); float64 for the upward recursion
        j = spherical_bessel(self.num_spherical - 1, self.zeros * x)  # (E, L, R, L): j_l'(z_ln x) for every l'
        ell = torch.arange(self.num_spherical, device=d.device)
        j = j[:, ell, :, ell].permute(1, 0, 2)  # (E, L, R): j_l(z_ln x)
        return (self.norm * j * polynomial_envelope(x, self.exponent)).to(d.dtype)

    def angular(self, cos_angle: Tensor) -> Tensor:
        p = [torch.ones_like(cos_angle), cos_angle]
        for l in range(1, self.num_spherical - 1):
            p.append(((2 * l + 1) * cos_angle * p[l] - l * p[l - 1]) / (l + 1))
        return torch.stack(p[: self.num_spherical], dim=-1) * self.sph_norm.to(cos_angle.dtype)


# ---- graph indices -----------------------------------------------------------------------------------------------
def _lex_order(keys: list[Tensor]) -> Tensor:
    """Permutation sorting rows lexicographically by ``keys`` (first key most significant)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device)
    for key in keys[::-1]:
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def reverse_edges(edge_index: Tensor, vectors: Tensor, where: str = "GemNet") -> Tensor:
    """(E,) index of each edge's reverse (dst → src, opposite vector); the graph must be symmetric."""
    src, dst = edge_index[0], edge_index[1]
    q = torch.round(vectors.detach() * 1e4).long()  # 1e-4 Å grid tells periodic images apart
    order = _lex_order([src, dst, q[:, 0], q[:, 1], q[:, 2]])
    flipped = _lex_order([dst, src, -q[:, 0], -q[:, 1], -q[:, 2]])
    same = (src[order] == dst[flipped]) & (dst[order] == src[flipped]) & (q[order] == -q[flipped]).all(dim=1)
    if not bool(same.all()):
        raise ValueError(f"{where} needs a symmetric graph (every edge with its reverse): max_neighbors dropped "
                         f"edges of crowded atoms; raise the student's max_neighbors")
    reverse = torch.empty_like(src)
    reverse[flipped] = order
    return reverse


def triplets(edge_index: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Triplets (k → j → i) as (incoming edge kj (T,), outgoing edge ji (T,)), all pairs sharing atom j except
    an edge with its own reverse (k = i, same image). Sorted by outgoing edge."""
    src, dst = edge_index[0], edge_index[1]
    n_atoms = int(torch.maximum(src.max(), dst.max())) + 1 if src.numel() > 0 else 0
    by_dst = torch.argsort(dst, stable=True)
    incoming = torch.bincount(dst, minlength=n_atoms)  # edges ending at each atom
    start = torch.cumsum(incoming, 0) - incoming
    per_out = incoming[src]  # outgoing edge ji (src j) pairs with every edge ending at j
    out_edge = torch.repeat_interleave(torch.arange(src.shape[0], device=src.device), per_out)
    offset = (torch.arange(out_edge.shape[0], device=src.device)
              - torch.repeat_interleave(torch.cumsum(per_out, 0) - per_out, per_out))
    in_edge = by_dst[start[src[out_edge]] + offset]
    keep = torch.linalg.vector_norm(vectors.detach()[in_edge] + vectors.detach()[out_edge], dim=-1) > 1e-4  # drop k = i
    return in_edge[keep], out_edge[keep]


def triplet_slots(out_edge: Tensor, n_edges: int) -> tuple[Tensor, int]:
    """Each triplet's place among its outgoing edge's triplets, (T,), and the most any edge has, K: the (edge, slot)
    layout of a padded (E, K, …) tensor. ``out_edge`` must be sorted (as ``triplets`` returns it)."""
    counts = torch.bincount(out_edge, minlength=n_edges)
    slot = torch.arange(out_edge.shape[0], device=out_edge.device) - (torch.cumsum(counts, 0) - counts)[out_edge]
    return slot, int(counts.max()) if counts.numel() > 0 else 0


class TripletGraph(NamedTuple):
    """GemNet's graph beyond the edges: triplets (in_edge, out_edge, slot: (T,)), each edge's reverse (E,), and
    ``slots`` = arange(K) (K, the most triplets of any edge, as a tensor length so an exported program sees it as a
    dynamic size)."""

    in_edge: Tensor
    out_edge: Tensor
    slot: Tensor
    reverse: Tensor
    slots: Tensor


def triplet_graph(edge_index: Tensor, vectors: Tensor) -> TripletGraph:
    """All of GemNet's data-dependent index arithmetic for edges (2, E) with vectors (E, 3) Å (no gradients)."""
    vectors = vectors.detach()
    in_edge, out_edge = triplets(edge_index, vectors)
    slot, k_max = triplet_slots(out_edge, edge_index.shape[1])
    return TripletGraph(in_edge, out_edge, slot, reverse_edges(edge_index, vectors),
                        torch.arange(k_max, device=edge_index.device))


# ---- layers ------------------------------------------------------------------------------------------------------
class Dense(nn.Module):
    """Linear (optionally without bias) followed by SiLU unless ``activation=False``."""

    def __init__(self, n_in: int, n_out: int, bias: bool = False, activation: bool = True) -> None:
        super().__init__()
        self.linear, self.activation = nn.Linear(n_in, n_out, bias=bias), activation

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        return nn.functional.silu(x) if self.activation else x


class Residual(nn.Module):
    """(x + Dense(Dense(x))) / √2."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(Dense(size, size), Dense(size, size))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.layers(x)) * INV_SQRT2


class TripletInteraction(nn.Module):
    """Messages of incoming edges kj, filtered by d_kj and mixed with the angle basis of (k, j, i) through a
    bilinear layer, summed onto the outgoing edge ji; the reverse edge's result is added symmetrically.

    The bilinear layer W (cbf, trip, bil) is linear in the basis and in the message, so it is applied after the
    sum over an edge's triplets: Σ_t Σ_ab cbf_ta x_tb W_abo = Σ_ab W_abo (Σ_t cbf_ta x_tb). The inner sum is one
    batched (cbf × K)·(K × trip) product per edge on triplets padded to K per edge; then W costs once per edge
    instead of once per triplet (T ≈ E·K; on CPU a GemNet-dT training step became 3.6× faster).
    """

    def __init__(self, emb_edge: int, emb_trip: int, emb_rbf: int, emb_cbf: int, emb_bil: int) -> None:
        super().__init__()
        self.dense_in = Dense(emb_edge, emb_edge)
        self.rbf_gate = Dense(emb_rbf, emb_edge, activation=False)
        self.down = Dense(emb_edge, emb_trip)
        self.bilinear = nn.Parameter(torch.randn(emb_cbf, emb_trip, emb_bil) / math.sqrt(emb_cbf * emb_trip))
        self.up_out = Dense(emb_bil, emb_edge)
        self.up_rev = Dense(emb_bil, emb_edge)

    def forward(self, m: Tensor, rbf3: Tensor, cbf: Tensor, in_edge: Tensor, out_edge: Tensor, slot: Tensor,
                reverse: Tensor) -> Tensor:
        """m (E, emb_edge), rbf3 (E, emb_rbf), cbf (E, emb_cbf, K): each edge's triplet bases by slot (zero
        padded); in_edge, out_edge, slot (T,) from ``triplets`` and ``triplet_slots``; reverse (E,)."""
        x = self.down(self.dense_in(m) * self.rbf_gate(rbf3))  # (E, emb_trip)
        padded = x.new_zeros(m.shape[0], cbf.shape[2], x.shape[1]).index_put((out_edge, slot), x[in_edge])
        summed = torch.bmm(cbf, padded)  # (E, emb_cbf, emb_trip): Σ_t cbf_ta x_tb per outgoing edge
        agg = summed.flatten(1) @ self.bilinear.flatten(0, 1)  # (E, emb_bil)
        return (self.up_out(agg) + self.up_rev(agg)[reverse]) * INV_SQRT2


class AtomUpdate(nn.Module):
    """h_i += Σ_{e → i} (W rbf_e ⊙ m_e), projected to atom size and refined by residual layers."""

    def __init__(self, emb_atom: int, emb_edge: int, num_radial: int, num_layers: int) -> None:
        super().__init__()
        self.rbf = Dense(num_radial, emb_edge, activation=False)
        self.project = Dense(emb_edge, emb_atom)
        self.layers = nn.Sequential(*[Residual(emb_atom) for _ in range(num_layers)])

    def forward(self, m: Tensor, rbf: Tensor, dst: Tensor, n_atoms: int) -> Tensor:
        x = m * self.rbf(rbf)
        agg = torch.zeros(n_atoms, x.shape[1], dtype=m.dtype, device=m.device).index_add(0, dst, x)
        return self.layers(self.project(agg))


class OutputBlock(nn.Module):
    """A block's contributions: atom features (N, emb_atom) for the energy and edge features (E, emb_edge) for
    direct forces."""

    def __init__(self, emb_atom: int, emb_edge: int, num_radial: int, num_layers: int) -> None:
        super().__init__()
        self.atoms = AtomUpdate(emb_atom, emb_edge, num_radial, num_layers)
        self.edge_rbf = Dense(num_radial, emb_edge, activation=False)
        self.edge_layers = nn.Sequential(Dense(emb_edge, emb_edge), *[Residual(emb_edge) for _ in range(num_layers)])

    def forward(self, m: Tensor, rbf: Tensor, dst: Tensor, n_atoms: int) -> tuple[Tensor, Tensor]:
        return self.atoms(m, rbf, dst, n_atoms), self.edge_layers(m * self.edge_rbf(rbf))


class InteractionBlock(nn.Module):
    """Triplet interaction and residual edge layers, atom update, then edges re-embedded from their atoms."""

    def __init__(self, emb_atom: int, emb_edge: int, emb_trip: int, emb_rbf: int, emb_cbf: int, emb_bil: int,
                 num_radial: int, num_before_skip: int, num_after_skip: int, num_atom_layers: int) -> None:
        super().__init__()
        self.dense_skip = Dense(emb_edge, emb_edge)
        self.triplet = TripletInteraction(emb_edge, emb_trip, emb_rbf, emb_cbf, emb_bil)
        self.before_skip = nn.Sequential(*[Residual(emb_edge) for _ in range(num_before_skip)])
        self.after_skip = nn.Sequential(*[Residual(emb_edge) for _ in range(num_after_skip)])
        self.atom_update = AtomUpdate(emb_atom, emb_edge, num_radial, num_atom_layers)
        self.concat = Dense(2 * emb_atom + emb_edge, emb_edge)
        self.after_concat = Residual(emb_edge)

    def forward(self, h, m, rbf, rbf3, cbf, edge_index, in_edge, out_edge, slot, reverse):
        src, dst = edge_index
        x = (self.dense_skip(m) + self.triplet(m, rbf3, cbf, in_edge, out_edge, slot, reverse)) * INV_SQRT2
        m = self.after_skip((m + self.before_skip(x)) * INV_SQRT2)
        h = (h + self.atom_update(m, rbf, dst, h.shape[0])) * INV_SQRT2
        m = (m + self.concat(torch.cat([h[src], h[dst], m], dim=-1))) * INV_SQRT2
        return h, self.after_concat(m)


class GemNetRepresentation(nn.Module):
    """z (N,), edge vectors (E, 3) Å, edge_index (2, E) → AtomFeatures(scalars (N, emb_atom), edges (E, emb_edge)),
    each the sum of the output blocks after the embedding and after every interaction block."""

    vector_features = False
    extra_graph = "hessdistill.models.gemnet.triplet_graph"  # what an exported program needs besides the edges

    def __init__(self, num_blocks: int = 4, emb_size_atom: int = 64, emb_size_edge: int = 64, emb_size_trip: int = 32,
                 emb_size_rbf: int = 16, emb_size_cbf: int = 16, emb_size_bil_trip: int = 64, num_spherical: int = 7,
                 num_radial: int = 6, envelope_exponent: int = 5, cutoff: float = 5.0, num_before_skip: int = 1,
                 num_after_skip: int = 2, num_atom_layers: int = 3, num_output_layers: int = 1) -> None:
        super().__init__()
        self.hidden_channels, self.edge_channels, self.cutoff = emb_size_atom, emb_size_edge, cutoff
        self.radial = RadialBasis(num_radial, cutoff, envelope_exponent)
        self.spherical = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.embedding = nn.Embedding(119, emb_size_atom)
        self.edge_embedding = Dense(2 * emb_size_atom + num_radial, emb_size_edge)
        self.rbf3 = Dense(num_radial, emb_size_rbf, activation=False)
        self.cbf3 = nn.Parameter(torch.randn(num_spherical, num_radial, emb_size_cbf)
                                 / math.sqrt(num_spherical * num_radial))
        self.blocks = nn.ModuleList([InteractionBlock(emb_size_atom, emb_size_edge, emb_size_trip, emb_size_rbf,
                                                      emb_size_cbf, emb_size_bil_trip, num_radial, num_before_skip,
                                                      num_after_skip, num_atom_layers) for _ in range(num_blocks)])
        self.outputs = nn.ModuleList([OutputBlock(emb_size_atom, emb_size_edge, num_radial, num_output_layers)
                                      for _ in range(num_blocks + 1)])

    def forward(self, z: Tensor, vectors: Tensor, edge_index: Tensor,
                graph: TripletGraph | None = None) -> AtomFeatures:
        """graph: the triplets of these edges (``triplet_graph``), computed here when None; an exported program
        takes them as inputs (``extra_graph``), so it contains no data-dependent index arithmetic."""
        src, dst = edge_index
        in_edge, out_edge, slot, reverse, slots = triplet_graph(edge_index, vectors) if graph is None else graph
        d = vectors.norm(dim=-1)
        rbf = self.radial(d)  # (E, R)
        # cos θ at j between r_i − r_j (−vector of ji) and r_k − r_j (vector of kj)
        cos_angle = -(vectors[out_edge] * vectors[in_edge]).sum(-1) / (d[out_edge] * d[in_edge])
        cbf_radial = torch.einsum("elr,lrc->elc", self.spherical.radial(d), self.cbf3)  # (E, L, emb_cbf)
        cbf = torch.einsum("tl,tlc->tc", self.spherical.angular(cos_angle.clamp(-1.0, 1.0)), cbf_radial[in_edge])
        cbf = cbf.new_zeros(src.shape[0], slots.shape[0], cbf.shape[1]).index_put((out_edge, slot), cbf).transpose(1, 2)
        rbf3 = self.rbf3(rbf)
        h = self.embedding(z)
        m = self.edge_embedding(torch.cat([h[src], h[dst], rbf], dim=-1))
        atoms, edges = self.outputs[0](m, rbf, dst, h.shape[0])
        for block, output in zip(self.blocks, self.outputs[1:]):
            h, m = block(h, m, rbf, rbf3, cbf, edge_index, in_edge, out_edge, slot, reverse)
            a, e = output(m, rbf, dst, h.shape[0])
            atoms, edges = atoms + a, edges + e
        return AtomFeatures(atoms, edges=edges)


def GemNet(num_blocks: int = 4, emb_size_atom: int = 64, emb_size_edge: int = 64, emb_size_trip: int = 32,
           emb_size_rbf: int = 16, emb_size_cbf: int = 16, emb_size_bil_trip: int = 64, num_spherical: int = 7,
           num_radial: int = 6, envelope_exponent: int = 5, cutoff: float = 5.0, max_neighbors: int | None = None,
           num_before_skip: int = 1, num_after_skip: int = 2, num_atom_layers: int = 3, num_output_layers: int = 1,
           force_mode: str = "direct") -> ForceField:
    """GemNet-dT (``force_mode="direct"``, the shared edge-force head) or GemNet-T (``"conservative"``, −∇U)."""
    rep = GemNetRepresentation(num_blocks, emb_size_atom, emb_size_edge, emb_size_trip, emb_size_rbf, emb_size_cbf,
                               emb_size_bil_trip, num_spherical, num_radial, envelope_exponent, cutoff,
                               num_before_skip, num_after_skip, num_atom_layers, num_output_layers)
    return ForceField(rep, force_mode=force_mode, cutoff=cutoff, max_neighbors=max_neighbors)
