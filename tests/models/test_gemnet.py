"""GemNet's pieces on cases with known answers: spherical Bessel functions and their zeros against scipy,
triplet and reverse-edge indices against brute force (molecules and periodic cells), and the configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from hydra import compose, initialize_config_dir
from scipy.special import spherical_jn

from conftest import make_batch, rattled
from hessdistill.config import CONFIG_DIR
from hessdistill.data.graph import radius_graph
from hessdistill.data.structures import Structure
from hessdistill.models.gemnet import (
    GemNet,
    SphericalBasis,
    TripletInteraction,
    reverse_edges,
    spherical_bessel,
    spherical_bessel_zeros,
    triplet_slots,
    triplets,
)


def test_spherical_bessel_and_zeros_match_scipy():
    x = torch.linspace(0.3, 25.0, 200, dtype=torch.float64)
    ours = spherical_bessel(6, x).numpy()
    ref = np.stack([spherical_jn(l, x.numpy()) for l in range(7)], axis=-1)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    zeros = spherical_bessel_zeros(6, 6)
    assert np.all(np.diff(zeros, axis=1) > 0) and np.allclose(zeros[0], np.pi * np.arange(1, 7))
    for l in range(7):
        assert np.abs(spherical_jn(l, zeros[l])).max() < 1e-12
    assert zeros[1, 0] == pytest.approx(4.493409457909, rel=1e-10)  # first zero of j_1 (tan x = x)


def test_spherical_basis_radial_part_vanishes_at_the_cutoff_and_angular_part_is_legendre():
    basis = SphericalBasis(num_spherical=4, num_radial=3, cutoff=5.0, envelope_exponent=5)
    radial = basis.radial(torch.tensor([1.0, 4.999999, 5.0], dtype=torch.float64))
    assert radial.shape == (3, 4, 3) and radial[0].abs().min() > 0 and radial[2].abs().max() == 0
    assert radial[1].abs().max() < 1e-10
    cos = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
    ang = basis.angular(cos) / basis.sph_norm
    legendre = torch.stack([torch.ones(3), cos, (3 * cos**2 - 1) / 2, (5 * cos**3 - 3 * cos) / 2], -1)
    torch.testing.assert_close(ang, legendre.double())


def brute_force_triplets(edge_index, vectors):
    src, dst = edge_index.tolist()
    out = set()
    for e_in in range(len(src)):
        for e_out in range(len(src)):
            if dst[e_in] == src[e_out] and (vectors[e_in] + vectors[e_out]).norm() > 1e-4:
                out.add((e_in, e_out))
    return out


@pytest.mark.parametrize("periodic", [False, True])
def test_triplets_and_reverse_edges_match_brute_force(periodic):
    if periodic:  # a small cell: an atom meets its own images, so k = i must be told apart by image
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.rattle(0.05, seed=1)
        s = Structure.from_atoms(atoms)
        cutoff = 4.0
    else:
        s = Structure.from_atoms(rattled("CH3OH", seed=2))
        cutoff = 2.5  # not every pair is an edge
    d = s.to_data(torch.float64)
    edge_index, shift = radius_graph(d.pos, cutoff, cell=d.cell[0], pbc=d.pbc[0])
    vectors = d.pos[edge_index[0]] - d.pos[edge_index[1]] + shift
    in_edge, out_edge = triplets(edge_index, vectors)
    got = set(zip(in_edge.tolist(), out_edge.tolist()))
    assert len(got) == len(in_edge) and got == brute_force_triplets(edge_index, vectors) and len(got) > 10
    reverse = reverse_edges(edge_index, vectors)
    torch.testing.assert_close(edge_index[:, reverse], edge_index.flip(0))
    torch.testing.assert_close(vectors[reverse], -vectors)
    assert torch.equal(reverse[reverse], torch.arange(len(reverse)))
    with pytest.raises(ValueError, match="symmetric graph.*max_neighbors"):
        reverse_edges(edge_index[:, 1:], vectors[1:])


def test_bilinear_after_the_triplet_sum_equals_the_per_triplet_formula():
    """Σ_t Σ_ab cbf_ta x_{in(t), b} W_abo summed onto out(t), computed per triplet (the paper's formula), equals the
    padded per-edge product the layer uses, on a molecule whose edges have different triplet counts."""
    d = Structure.from_atoms(rattled("CH3CH2OH", seed=2)).to_data(torch.float64)
    edge_index, shift = radius_graph(d.pos, 2.5, cell=d.cell[0], pbc=d.pbc[0])
    vectors = d.pos[edge_index[0]] - d.pos[edge_index[1]] + shift
    in_edge, out_edge = triplets(edge_index, vectors)
    n_edges = edge_index.shape[1]
    slot, k_max = triplet_slots(out_edge, n_edges)
    counts = torch.bincount(out_edge, minlength=n_edges)
    assert k_max == int(counts.max()) and counts.min() < k_max  # padding really happens
    assert len(set(zip(out_edge.tolist(), slot.tolist()))) == len(slot) and int(slot.max()) == k_max - 1
    torch.manual_seed(0)
    layer = TripletInteraction(emb_edge=8, emb_trip=4, emb_rbf=3, emb_cbf=5, emb_bil=6).double()
    m, rbf3 = torch.randn(n_edges, 8, dtype=torch.float64), torch.randn(n_edges, 3, dtype=torch.float64)
    cbf = torch.randn(len(in_edge), 5, dtype=torch.float64)
    padded = torch.zeros(n_edges, k_max, 5, dtype=torch.float64).index_put((out_edge, slot), cbf).transpose(1, 2)
    reverse = reverse_edges(edge_index, vectors)
    got = layer(m, rbf3, padded, in_edge, out_edge, slot, reverse)
    x = layer.down(layer.dense_in(m) * layer.rbf_gate(rbf3))
    per_triplet = torch.einsum("ta,tb,abo->to", cbf, x[in_edge], layer.bilinear)
    agg = torch.zeros(n_edges, 6, dtype=torch.float64).index_add(0, out_edge, per_triplet)
    expected = (layer.up_out(agg) + layer.up_rev(agg)[reverse]) / 2**0.5
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)


def test_gemnet_configs_compose_to_dt_and_t_with_the_papers_size():
    import hydra

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        dt = compose("train", overrides=["student=gemnet_dt"]).student
        t = compose("train", overrides=["student=gemnet_t"]).student
    assert dt.force_mode == "direct" and t.force_mode == "conservative"
    assert {k: v for k, v in dt.items() if k != "force_mode"} == {k: v for k, v in t.items() if k != "force_mode"}
    model = hydra.utils.instantiate(dt)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.6e6 < n_params < 0.75e6  # paper: ~0.67M
    assert (dt.num_blocks, dt.emb_size_atom, dt.emb_size_trip, dt.num_spherical, dt.num_radial) == (4, 64, 32, 7, 6)


def test_gemnet_handles_a_diatomic_without_triplets():
    model = GemNet(num_blocks=1, emb_size_atom=8, emb_size_edge=8, emb_size_trip=4, emb_size_rbf=4, emb_size_cbf=4,
                   emb_size_bil_trip=4, num_spherical=3, num_radial=3, force_mode="conservative").double()
    batch = make_batch([rattled("CO", seed=0)])
    energy, forces = model.energy_forces(batch)
    assert torch.isfinite(energy).all() and torch.allclose(forces.sum(0), torch.zeros(3, dtype=torch.float64),
                                                           atol=1e-12)
