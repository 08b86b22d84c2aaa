"""The batch schema: every field a batch can carry, with its shape and unit, in one place.

A structure becomes a ``StructureData`` (``Structure.to_data``); the datamodule and the label sources add fields;
PyG collates items into a batch. Shapes are per batch: B structures, Ntot atoms, E edges, s sampled Hessian rows
per structure, k probe vectors per structure, F_t teacher feature width. Hessian rows (and probes) use the one lane
layout (s, Ntot, 3) of ``hessdistill.hessian`` from collate to loss: an item holds its rows as (s, N, 3) and they
are concatenated along the atom axis (``StructureData.__cat_dim__``), so nothing downstream permutes them.
"""

from __future__ import annotations

from typing import NamedTuple

from torch_geometric.data import Data


class Field(NamedTuple):
    shape: str
    unit: str
    meaning: str


Z, POS, CELL, PBC, NATOMS = "z", "pos", "cell", "pbc", "natoms"
ENERGY, FORCES = "energy", "forces"
STRUCTURE_ID = "idx"
EDGE_INDEX, EDGE_SHIFT = "edge_index", "edge_shift"
TEACHER_ENERGY, TEACHER_FORCES, TEACHER_NODE_FEATURES = "teacher_energy", "teacher_forces", "teacher_node_features"
SAMPLED_ROWS, TEACHER_ROWS = "sampled_rows", "teacher_rows"
PROBE_VECTORS, TEACHER_HVP = "probe_vectors", "teacher_hvp"
ORIGIN, ENERGY_WEIGHT, ROW_WEIGHTS = "origin", "energy_weight", "row_weights"

# where a structure comes from (the ``origin`` field, and info["origin"] of an added store's structures)
ORIGINS = ("reference", "rattle", "normal_mode", "teacher_md", "on_policy")
REFERENCE, RATTLE, NORMAL_MODE, TEACHER_MD, ON_POLICY = range(len(ORIGINS))

FIELDS: dict[str, Field] = {
    Z: Field("(Ntot,) int64", "", "atomic numbers"),
    POS: Field("(Ntot, 3)", "Å", "positions"),
    CELL: Field("(B, 3, 3)", "Å", "cell vectors as rows (zeros when non-periodic)"),
    PBC: Field("(B, 3) bool", "", "periodic along each cell vector"),
    NATOMS: Field("(B,) int64", "", "atoms per structure"),
    ENERGY: Field("(B,)", "eV", "reference energy"),
    FORCES: Field("(Ntot, 3)", "eV/Å", "reference forces"),
    STRUCTURE_ID: Field("(B,) int64", "", "index of the structure in its store; structures of stores added to "
                                          "training follow the subset store's, store after store"),
    EDGE_INDEX: Field("(2, E) int64", "", "radius graph, source j → target i, into the batch's atoms"),
    EDGE_SHIFT: Field("(E, 3)", "Å", "periodic shift: r_ij = pos[j] − pos[i] + shift"),
    TEACHER_ENERGY: Field("(B,)", "eV", "teacher energy"),
    TEACHER_FORCES: Field("(Ntot, 3)", "eV/Å", "teacher forces"),
    TEACHER_NODE_FEATURES: Field("(Ntot, F_t)", "", "teacher final-layer node features (n2n baseline)"),
    SAMPLED_ROWS: Field("(B, s) int64", "", "each structure's sampled Hessian rows j = 3·atom + axis"),
    TEACHER_ROWS: Field("(s, Ntot, 3)", "eV/Å²", "teacher Hessian rows H_j of the sampled rows, as lanes"),
    PROBE_VECTORS: Field("(k, Ntot, 3)", "", "each structure's k random probe vectors v (entries of mean 0, variance "
                                           "1), as lanes (Hessian-vector-product KD)"),
    TEACHER_HVP: Field("(k, Ntot, 3)", "eV/Å²", "teacher Hessian-vector products H v of the probe vectors, as lanes"),
    ORIGIN: Field("(B,) int64", "", "ORIGINS[k]: the subset's own structure (0) or a teacher-labelled one added to "
                                    "training (runs with added stores only)"),
    ENERGY_WEIGHT: Field("(B,)", "", "weight of each structure's energy terms (0: forces only; runs with added "
                                     "stores only)"),
    ROW_WEIGHTS: Field("(B, s)", "", "importance weight 1/(n·p_j) of each sampled row (non-uniform row sampling "
                                     "only)"),
}
# per-structure weights of a target: where a batch carries them, terms comparing against the target apply them
TARGET_WEIGHTS = {ENERGY: ENERGY_WEIGHT, TEACHER_ROWS: ROW_WEIGHTS}
# PyG's own fields of a collated batch: ``batch`` (Ntot,) structure of each atom, ``ptr`` (B+1,) atom offsets.

LANE_FIELDS = frozenset({TEACHER_ROWS, PROBE_VECTORS, TEACHER_HVP})  # joined along the atom axis (dim 1), not dim 0


class StructureData(Data):
    """A PyG ``Data`` that knows the schema's collation: lane fields are joined along their atom axis."""

    def __cat_dim__(self, key: str, value, *args, **kwargs):
        if key in LANE_FIELDS:
            return 1
        return super().__cat_dim__(key, value, *args, **kwargs)
