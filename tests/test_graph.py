"""Radius graphs: each backend against brute force or ase.neighborlist, neighbour caps, periodic shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list

from hessdistill.data.graph import radius_graph


def random_cloud(n: int = 24, box: float = 5.0, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * box


def brute_force_edges(pos: torch.Tensor, cutoff: float) -> set[tuple[int, int]]:
    """All (source j, target i) pairs, i ≠ j, closer than the cutoff."""
    n = pos.shape[0]
    return {(j, i) for i in range(n) for j in range(n)
            if i != j and float((pos[j] - pos[i]).norm()) < cutoff}


def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def test_torch_backend_matches_brute_force():
    pos = random_cloud()
    edge_index, shift = radius_graph(pos, cutoff=2.0, max_neighbors=1000, backend="torch")
    expected = brute_force_edges(pos, 2.0)
    assert len(expected) > 20  # a non-trivial graph
    assert edge_index.shape[1] == len(expected) == len(edge_set(edge_index))  # no duplicates
    assert edge_set(edge_index) == expected
    assert shift.shape == (edge_index.shape[1], 3) and shift.abs().max() == 0


def test_max_neighbors_keeps_the_nearest():
    pos = random_cloud(n=30, box=4.0, seed=1)
    cutoff, cap = 3.0, 4
    full = brute_force_edges(pos, cutoff)
    edge_index, _ = radius_graph(pos, cutoff=cutoff, max_neighbors=cap, backend="torch")
    kept = edge_set(edge_index)
    assert kept <= full
    for i in range(pos.shape[0]):
        candidates = sorted(float((pos[j] - pos[i]).norm()) for j, t in full if t == i)
        got = sorted(float((pos[j] - pos[i]).norm()) for j, t in kept if t == i)
        assert len(got) == min(cap, len(candidates))
        assert got == pytest.approx(candidates[:cap])
    assert max(sum(1 for _, t in full if t == i) for i in range(30)) > cap  # the cap did bind


def test_ase_backend_periodic_matches_ase_neighborlist():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms, 5.43 Å cube
    atoms.rattle(0.05, seed=3)
    cutoff = 4.0
    pos = torch.as_tensor(atoms.positions)
    cell = torch.as_tensor(np.asarray(atoms.cell))
    pbc = torch.as_tensor(atoms.pbc)
    edge_index, shift = radius_graph(pos, cutoff, max_neighbors=1000, cell=cell, pbc=pbc, backend="ase")
    vectors = pos[edge_index[0]] - pos[edge_index[1]] + shift
    lengths = vectors.norm(dim=-1)
    assert (lengths < cutoff).all() and (lengths > 0.5).all()

    i, j, d = neighbor_list("ijd", atoms, cutoff)
    assert edge_index.shape[1] == len(i)
    np.testing.assert_allclose(np.sort(lengths.numpy()), np.sort(d), atol=1e-10)
    # shifts are whole lattice vectors
    frac = np.linalg.solve(np.asarray(atoms.cell).T, shift.numpy().T).T
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-10)
    assert np.abs(frac).max() >= 1  # periodic images were used

    # "auto" picks the ase backend for periodic structures
    auto_index, auto_shift = radius_graph(pos, cutoff, max_neighbors=1000, cell=cell, pbc=pbc)
    assert torch.equal(auto_index, edge_index) and torch.equal(auto_shift, shift)


def test_ase_backend_small_cell_sees_its_own_images():
    """A cell shorter than the cutoff: an atom neighbours its own periodic images (i == j, shift ≠ 0)."""
    cell = torch.eye(3, dtype=torch.float64) * 2.5
    pos = torch.tensor([[0.1, 0.2, 0.3], [1.3, 1.1, 1.4]], dtype=torch.float64)
    pbc = torch.tensor([True, True, True])
    edge_index, shift = radius_graph(pos, 3.0, max_neighbors=1000, cell=cell, pbc=pbc, backend="ase")
    from ase import Atoms

    i, d = neighbor_list("id", Atoms("H2", positions=pos.numpy(), cell=cell.numpy(), pbc=True), 3.0)
    assert edge_index.shape[1] == len(i)
    self_edges = edge_index[0] == edge_index[1]
    assert self_edges.any()
    assert shift[self_edges].norm(dim=-1).min() == pytest.approx(2.5)
    lengths = (pos[edge_index[0]] - pos[edge_index[1]] + shift).norm(dim=-1)
    np.testing.assert_allclose(np.sort(lengths.numpy()), np.sort(d), atol=1e-10)


def test_partial_pbc_and_backend_errors():
    pos = random_cloud(n=6)
    pbc = torch.tensor([True, False, False])
    cell = torch.diag(torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="non-periodic structures only"):
        radius_graph(pos, 2.0, cell=cell, pbc=pbc, backend="torch")
    with pytest.raises(ValueError, match="unknown radius-graph backend"):
        radius_graph(pos, 2.0, backend="kdtree")
    # a non-periodic structure through the ase backend gives the brute-force graph
    edge_index, shift = radius_graph(pos, 2.0, backend="ase")
    assert edge_set(edge_index) == brute_force_edges(pos, 2.0)
    assert shift.abs().max() == 0


@pytest.mark.parametrize("cap", [1000, 3])
def test_torch_cluster_backend_equals_torch_backend(cap):
    pytest.importorskip("torch_cluster", reason="torch_cluster (optional extra) is not installed")
    pos = random_cloud(n=40, box=5.0, seed=2)
    ref, _ = radius_graph(pos, 2.5, max_neighbors=cap, backend="torch")
    got, shift = radius_graph(pos, 2.5, max_neighbors=cap, backend="torch_cluster")
    assert edge_set(got) == edge_set(ref)
    assert got.shape == ref.shape and shift.abs().max() == 0
