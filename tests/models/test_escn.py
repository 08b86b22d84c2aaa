"""The eSCN student's pieces on known answers: its l ≤ 2 rotation matrices form a representation and rotate the
coefficients of vectors and outer products as they should, edge frames put the edge on y, SO(2) convolutions
commute with rotations about y, and the output does not depend on how each edge frame is rolled about its edge.
(Rows, gradients, invariance and a training run are in test_students.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.spatial.transform import Rotation

from conftest import make_batch, rattled
from hessdistill.config import CONFIG_DIR
from hessdistill.models import escn
from hessdistill.models.escn import ESCN, SO2Linear, edge_rotations, l2_basis, wigner

BASIS = l2_basis()


def rotation(seed: int) -> torch.Tensor:
    return torch.tensor(Rotation.random(random_state=seed).as_matrix())


def rotation_about_y(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def d_of(r: torch.Tensor) -> torch.Tensor:
    return wigner(r[None], BASIS)[0]


def coefficients(u: torch.Tensor) -> torch.Tensor:
    """(9,) l ≤ 2 coefficients of the vector u: 1, u, and the traceless part of u uᵀ in the l = 2 basis."""
    outer = torch.outer(u, u) - u.dot(u) / 3 * torch.eye(3, dtype=u.dtype)
    return torch.cat([torch.ones(1, dtype=u.dtype), u, torch.einsum("aij,ij->a", BASIS, outer)])


def test_rotation_matrices_are_an_orthogonal_representation_acting_on_coefficients():
    r1, r2 = rotation(1), rotation(2)
    torch.testing.assert_close(d_of(r1 @ r2), d_of(r1) @ d_of(r2), atol=1e-13, rtol=0)
    torch.testing.assert_close(d_of(r1) @ d_of(r1).T, torch.eye(9, dtype=torch.float64), atol=1e-13, rtol=0)
    assert torch.einsum("aij,bij->ab", BASIS, BASIS).allclose(torch.eye(5, dtype=torch.float64))
    assert torch.einsum("aii->a", BASIS).abs().max() < 1e-15  # traceless
    u = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    torch.testing.assert_close(d_of(r1) @ coefficients(u), coefficients(r1 @ u), atol=1e-13, rtol=0)


def test_edge_frames_put_each_edge_on_y():
    vectors = torch.randn(50, 3, dtype=torch.float64)
    vectors[0] = torch.tensor([0.0, 2.0, 0.0])  # already on y
    vectors[1] = torch.tensor([1.0, 1.0, 1.0])  # a tie between helper axes
    frames = edge_rotations(vectors)
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(torch.einsum("eij,ej->ei", frames, unit), torch.tensor([[0.0, 1.0, 0.0]] * 50,
                                                                                       dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.det(frames), torch.ones(50, dtype=torch.float64))


def test_so2_convolution_commutes_with_rotations_about_the_edge():
    torch.manual_seed(0)
    conv = SO2Linear(5, 4).double()
    x = torch.randn(7, 9, 5, dtype=torch.float64)
    turn = d_of(rotation_about_y(0.83))
    torch.testing.assert_close(conv(turn @ x), turn @ conv(x), atol=1e-13, rtol=0)
    torch.testing.assert_close(turn @ coefficients(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)),
                               coefficients(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)))  # y itself is fixed
    general = d_of(rotation(4))  # a rotation that moves y: not a symmetry of the edge frame
    assert (conv(general @ x) - general @ conv(x)).abs().max() > 1e-3


def test_output_does_not_depend_on_the_roll_of_the_edge_frames(monkeypatch):
    torch.manual_seed(1)
    model = ESCN(channels=8, hidden_channels=6, num_layers=2, num_radial=4, cutoff=4.0).double()
    batch = make_batch([rattled("CH3CH2OH", seed=1, stdev=0.1)])
    energy, forces = model.energy_forces(batch)
    frames = edge_rotations

    def rolled(vectors):  # each frame followed by its own rotation about y: another valid frame for the edge
        angles = torch.linspace(0.1, 6.0, vectors.shape[0], dtype=vectors.dtype)
        c, s, zero, one = torch.cos(angles), torch.sin(angles), torch.zeros_like(angles), torch.ones_like(angles)
        roll = torch.stack([torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
                            torch.stack([-s, zero, c], -1)], dim=1)
        return roll @ frames(vectors)

    monkeypatch.setattr(escn, "edge_rotations", rolled)
    energy_rolled, forces_rolled = model.energy_forces(make_batch([rattled("CH3CH2OH", seed=1, stdev=0.1)]))
    torch.testing.assert_close(energy_rolled, energy, atol=1e-12, rtol=0)
    torch.testing.assert_close(forces_rolled, forces, atol=1e-12, rtol=0)
    assert forces.abs().max() > 1e-4


def test_escn_config_has_the_papers_size():
    import hydra

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["student=escn"]).student
    model = hydra.utils.instantiate(cfg)
    assert cfg.force_mode == "direct" and 0.9e6 < sum(p.numel() for p in model.parameters()) < 0.98e6  # paper: 0.94M


@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
def test_energy_is_smooth_as_an_atom_leaves_the_cutoff(force_mode):
    """Messages vanish with the envelope at the cutoff: energy and forces change continuously as the distance of
    a far atom crosses it."""
    torch.manual_seed(2)
    model = ESCN(channels=8, hidden_channels=6, num_layers=2, num_radial=4, cutoff=3.0, force_mode=force_mode).double()
    energies = []
    for d in (2.999, 2.9999, 3.0001):
        atoms = rattled("H2O", seed=0)
        atoms.positions[1] = atoms.positions[0] + [0.0, 0.0, d]  # H at distance d from O along z
        energies.append(model.energy_forces(make_batch([atoms]))[0])
    assert abs(float(energies[1] - energies[2])) < 1e-9 and abs(float(energies[0] - energies[1])) < 1e-6
