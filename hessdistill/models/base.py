"""The student contract: a representation (the one thing a student file defines) inside ``ForceField``, which adds
the energy head, the forces (direct head or conservative −∇U), stress, and the radius graph.

A representation is an ``nn.Module`` mapping (z (N,), edge vectors r_src − r_dst + shift (E, 3) Å, edge_index (2, E)
[, the index tensors of its ``extra_graph``]) to ``AtomFeatures``: scalars s (N, F) always; vectors v (N, 3, F) if it
is equivariant (PaiNN, MACE, eSCN); edge features (E, F_e) otherwise. It declares (``Representation``):
``hidden_channels`` (F); ``vector_features`` (True when it returns v); ``edge_channels`` (F_e, without vectors);
``embedding``, its element embedding (nn.Embedding(119, F) or anything mapping z to (N, F)), which the a2a
baseline swaps for a projection of the teacher's; and optionally ``extra_graph``, the dotted name of a function
(edge_index, vectors) → tuple of index tensors it needs beyond edges (GemNet's triplets). All message passing uses
index_add (twice differentiable), so every student has Hessian rows in both force modes.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from hessdistill.data.graph import batch_radius_graph, tile_graph
from hessdistill.models.elements import elements_of, every_element
from hessdistill.models.heads import GatedEquivariantBlock, ProjectedEmbedding, mlp

ForceMode = Literal["direct", "conservative"]


class Representation(Protocol):
    """What ``ForceField`` reads of a representation (see the module docstring); ``edge_channels`` only without
    vectors, ``extra_graph`` only where the representation needs more than edges."""

    hidden_channels: int
    vector_features: bool
    edge_channels: int
    embedding: nn.Module

    def __call__(self, z: Tensor, vectors: Tensor, edge_index: Tensor, *graph: Tensor) -> AtomFeatures: ...


class AtomFeatures(NamedTuple):
    """What a representation returns: scalars (N, F); vectors (N, 3, F) or None; edges (E, F_e) or None."""

    scalars: Tensor
    vectors: Tensor | None = None
    edges: Tensor | None = None



def sum_energies(atom_energy: Tensor, structure: Tensor, num_structures: int) -> Tensor:
    """Σ of atom energies (N,) eV per structure, (B,) in float64 whatever their dtype: totals of ~10⁴ eV in float32
    would keep only ~1 meV of resolution (and finite differences of them, none)."""
    out = torch.zeros(num_structures, dtype=torch.float64, device=atom_energy.device)
    return out.index_add(0, structure, atom_energy.double())


class ForceField(nn.Module):
    """A student: representation + energy head + direct or conservative forces.

    Energy U = Σ_i (scale · MLP(s_i) + ref[z_i]) in eV, summed in float64; ``atom_refs`` (119,) eV and ``scale`` (eV)
    are buffers set from training statistics by ``set_energy_statistics``. Direct forces = scale · head(s, v) eV/Å.
    ``trained_elements`` (119,) bool, set with them, holds the training split's elements: every path that evaluates
    a student refuses others (``models.elements.check_elements``) unless ``allow_unseen_elements`` (an attribute
    of this object, not saved) or the path's own opt-in says otherwise; ``source`` names the file it was loaded from.
    """

    allow_unseen_elements: bool = False
    source: str | None = None

    def __init__(self, representation: nn.Module, force_mode: ForceMode = "direct", cutoff: float = 5.0,
                 max_neighbors: int | None = None) -> None:
        super().__init__()
        if force_mode not in ("direct", "conservative"):
            raise ValueError(f"force_mode must be 'direct' or 'conservative', got {force_mode!r}")
        self.representation = representation
        self.force_mode = force_mode
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        f = representation.hidden_channels
        self.energy_head = mlp(f, f // 2, 1)
        if force_mode == "direct":
            if getattr(representation, "vector_features", False):
                self.force_blocks = nn.ModuleList([GatedEquivariantBlock(f, f // 2), GatedEquivariantBlock(f // 2, 1)])
            else:
                fe = representation.edge_channels
                self.edge_force_head = mlp(fe, fe // 2, 1)
        self.register_buffer("atom_refs", torch.zeros(119))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("trained_elements", every_element())  # until set_energy_statistics says otherwise

    def use_teacher_embeddings(self, z: Tensor, table: Tensor) -> None:
        """a2a: replace the representation's element embedding (its ``embedding``, an nn.Embedding(119, F)) by a
        learned projection of the teacher's element embeddings (z (E,), table (E, F_t))."""
        old = getattr(self.representation, "embedding", None)
        if not isinstance(old, nn.Embedding):
            raise ValueError(f"a2a needs a student whose representation has an element embedding table "
                             f"(nn.Embedding); {type(self.representation).__name__} has none")
        self.representation.embedding = ProjectedEmbedding(z, table, old.embedding_dim).to(old.weight)

    def set_energy_statistics(self, atom_refs: Tensor, scale: float) -> None:
        """atom_refs: (119,) eV per element (linear fit of training energies; 0 for the elements absent from them);
        scale: force RMS, eV/Å. The elements with a reference energy become the student's ``trained_elements``."""
        self.atom_refs.copy_(atom_refs.to(self.atom_refs))
        self.scale.fill_(float(scale))
        self.trained_elements.copy_(elements_of(atom_refs))

    def ensure_graph(self, batch):
        """Add edge_index/edge_shift (radius graph at this student's cutoff) to a batch that has none."""
        if getattr(batch, "edge_index", None) is not None:
            return batch
        batch.edge_index, batch.edge_shift = batch_radius_graph(batch, self.cutoff, self.max_neighbors)
        return batch

    def atom_outputs(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor,
                     edge_deform: Tensor | None = None, graph=None) -> tuple[Tensor, Tensor | None, AtomFeatures]:
        """Atom interaction energies (N,) eV — the per-element reference energies excluded (``reference_energy``) —,
        direct forces (N, 3) eV/Å (None for a conservative student) and the features, from plain tensors: z (N,),
        pos (N, 3) Å, edge_index (2, E), edge_shift (E, 3) Å; edge_deform (E, 3, 3) optionally maps every edge vector
        r → D r (homogeneous strain, for stress). graph: precomputed indices for a representation that declares
        ``extra_graph`` (GemNet's triplets), else None."""
        src, dst = edge_index
        vectors = pos[src] - pos[dst] + edge_shift
        if edge_deform is not None:
            vectors = torch.einsum("eij,ej->ei", edge_deform, vectors)
        extra = () if graph is None else (graph,)
        features = self.representation(z, vectors, edge_index, *extra)
        atom_energy = self.scale * self.energy_head(features.scalars).squeeze(-1)
        if self.force_mode == "conservative":
            return atom_energy, None, features
        if features.vectors is not None:
            s, v = features.scalars, features.vectors
            for block in self.force_blocks:
                s, v = block(s, v)
            return atom_energy, self.scale * v.squeeze(-1), features
        unit = vectors / vectors.norm(dim=-1, keepdim=True)
        weights = self.edge_force_head(features.edges)  # (E, 1): force on dst along r̂ = (r_src − r_dst)/d
        return atom_energy, self.scale * torch.zeros_like(pos).index_add(0, dst, weights * unit), features

    def reference_energy(self, z: Tensor, structure: Tensor, num_structures: int) -> Tensor:
        """Σ of each structure's per-element reference energies, (B,) float64 eV (z (N,), structure (N,) its index)."""
        return sum_energies(self.atom_refs[z], structure, num_structures)

    def outputs(self, pos: Tensor, batch, create_graph: bool = False,
                strain: Tensor | None = None) -> tuple[Tensor, Tensor, AtomFeatures]:
        """Energies (B,) eV in float64, forces (Ntot, 3) eV/Å and the representation's features, as functions of
        ``pos`` (Ntot, 3) Å, which must require grad for conservative forces. ``batch`` needs a graph
        (``ensure_graph``).
        strain: (B, 3, 3) homogeneous deformation ε applied to every edge vector, r → (I + ε) r (for stress)."""
        deform = None
        if strain is not None:
            eye = torch.eye(3, dtype=pos.dtype, device=pos.device)
            deform = (eye + strain)[batch.batch[batch.edge_index[1]]]
        atom_energy, forces, features = self.atom_outputs(batch.z, pos, batch.edge_index, batch.edge_shift.to(pos),
                                                          deform)
        energy = sum_energies(atom_energy, batch.batch, batch.num_graphs) + self.reference_energy(batch.z, batch.batch,
                                                                                                 batch.num_graphs)
        if forces is None:
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
            forces = -grad
        return energy, forces, features

    def outputs_at(self, positions: Tensor, batch, create_graph: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """The batch evaluated at c sets of positions in one forward: positions (c, Ntot, 3) Å (differentiable; a
        conservative student needs them to depend on a leaf that requires grad) → energies (c, B) eV (float64), forces
        (c, Ntot, 3) eV/Å and final atom scalars (c, Ntot, F). Every copy keeps the batch's graph (``tile_graph``).
        Used for finite-difference Hessian rows: the displaced copies run in the same forward as the batch."""
        c, n = positions.shape[0], positions.shape[1]
        energy, forces, features = self.outputs(positions.reshape(c * n, 3), tile_graph(batch, c), create_graph)
        return (energy.view(c, batch.num_graphs), forces.view(c, n, 3),
                features.scalars.view(c, n, features.scalars.shape[-1]))

    def forward(self, batch, create_graph: bool = False) -> dict[str, Tensor]:
        """energy (B,) eV, forces (Ntot, 3) eV/Å, pos (Ntot, 3): the leaf the outputs depend on, and node_features
        (Ntot, F): the representation's final atom scalars (for the n2n baseline).

        create_graph: keep conservative forces differentiable (needed for Hessian rows and training).
        """
        batch = self.ensure_graph(batch)
        pos = batch.pos.detach().requires_grad_(True)
        energy, forces, features = self.outputs(pos, batch, create_graph)
        return {"energy": energy, "forces": forces, "pos": pos, "node_features": features.scalars}

    def energy_forces_stress(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """Energies (B,) eV, forces (Ntot, 3) eV/Å and stress (B, 3, 3) eV/Å³ = (1/V) ∂U/∂ε of periodic structures
        (ASE's sign convention), detached. The stress is the derivative of the student's energy, also for a
        direct-force student."""
        batch = self.ensure_graph(batch)
        with torch.enable_grad():
            pos = batch.pos.detach().requires_grad_(True)
            strain = torch.zeros(batch.num_graphs, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            energy, forces, _ = self.outputs(pos, batch, create_graph=True, strain=strain)
            (d_strain,) = torch.autograd.grad(energy.sum(), strain)
        volume = torch.linalg.det(batch.cell.to(pos)).abs()
        stress = d_strain / volume[:, None, None]
        return energy.detach(), forces.detach(), 0.5 * (stress + stress.transpose(1, 2))

    def atom_energies(self, batch) -> Tensor:
        """Inference: each atom's energy (Ntot,) eV in float64 (interaction + its element's reference), detached;
        they sum to the structures' energies."""
        batch = self.ensure_graph(batch)
        with torch.enable_grad():
            atom_energy, _, _ = self.atom_outputs(batch.z, batch.pos, batch.edge_index, batch.edge_shift.to(batch.pos))
        return atom_energy.detach().double() + self.atom_refs[batch.z].double()

    def energy_forces(self, batch) -> tuple[Tensor, Tensor]:
        """Inference: energies (B,) eV (float64) and forces (Ntot, 3) eV/Å, detached (same protocol as teachers)."""
        with torch.enable_grad():
            out = self(batch)
        return out["energy"].detach(), out["forces"].detach()
