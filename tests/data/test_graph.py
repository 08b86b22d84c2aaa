"""Radius graphs (vesin) against a brute-force reference over all pairs and periodic images, batches against
per-structure graphs, the opt-in neighbour cap, and why the cap is opt-in: it makes the energy discontinuous."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from hessdistill.data.graph import batch_radius_graph, radius_graph
from hessdistill.data.structures import Structure
from hessdistill.models.painn import PaiNN


def random_cloud(n: int = 24, box: float = 5.0, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * box


def plane_spacing(cell: np.ndarray, pbc: np.ndarray, k: int) -> float:
    """Distance (Å) between neighbouring lattice planes along periodic axis k: the part of cell[k] orthogonal to
    the other periodic lattice vectors."""
    a, basis = cell[k].copy(), []
    for m in range(3):
        if m != k and pbc[m]:
            v = cell[m] - sum((cell[m] @ q) * q for q in basis)
            basis.append(v / np.linalg.norm(v))
    return float(np.linalg.norm(a - sum((a @ q) * q for q in basis)))


def brute_force_edges(pos, cutoff, cell=None, pbc=None) -> set[tuple[int, int, int, int, int]]:
    """Every (source j, target i, S1, S2, S3) with |pos[j] − pos[i] + S @ cell| < cutoff over all pairs and all
    integer image shifts S (zero along non-periodic axes), except an atom with itself at S = 0."""
    pos = np.asarray(pos, dtype=np.float64)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    pbc = np.zeros(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
    diameter = np.linalg.norm(pos[:, None] - pos[None], axis=-1).max()
    # |S_k| · spacing_k ≤ cutoff + diameter bounds every image that can be within the cutoff
    reach = [math.ceil((cutoff + diameter) / plane_spacing(cell, pbc, k)) if pbc[k] else 0 for k in range(3)]
    edges = set()
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        dist = np.linalg.norm(pos[None, :] - pos[:, None] + np.array(shift) @ cell, axis=-1)  # [i, j]
        for i, j in zip(*np.nonzero(dist < cutoff)):
            if i != j or any(shift):
                edges.add((int(j), int(i), *shift))
    return edges


def edge_set(edge_index, shift, cell=None) -> set[tuple[int, int, int, int, int]]:
    """(j, i, S) of a graph, S recovered from the shift in Å (cell None: a molecule, S = 0)."""
    if cell is None:
        assert not shift.any()
        cell_shift = np.zeros((len(shift), 3), dtype=int)
    else:
        cell_shift = np.linalg.solve(np.asarray(cell).T, shift.numpy().T).T
        np.testing.assert_allclose(cell_shift, np.round(cell_shift), atol=1e-8)  # whole lattice vectors
        cell_shift = np.round(cell_shift).astype(int)
    edges = {(j, i, *s) for (j, i), s in zip(edge_index.t().tolist(), cell_shift.tolist())}
    assert len(edges) == edge_index.shape[1]  # no duplicate edges
    return edges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_molecules_match_brute_force(seed):
    pos = random_cloud(seed=seed)
    edge_index, shift = radius_graph(pos, cutoff=2.0)
    expected = brute_force_edges(pos, 2.0)
    assert len(expected) > 20  # a non-trivial graph
    assert edge_index.dtype == torch.long and shift.dtype == pos.dtype and shift.shape == (edge_index.shape[1], 3)
    assert edge_set(edge_index, shift) == expected
    # an explicit zero cell with pbc off is the same molecule
    zero_cell = radius_graph(pos, 2.0, cell=torch.zeros(3, 3, dtype=pos.dtype), pbc=torch.zeros(3, dtype=torch.bool))
    assert edge_set(*zero_cell) == expected


def rattled_silicon() -> tuple[torch.Tensor, torch.Tensor]:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms, 5.43 Å cube
    atoms.rattle(0.05, seed=3)
    return torch.as_tensor(atoms.positions), torch.as_tensor(np.asarray(atoms.cell))


def triclinic_cell() -> torch.Tensor:
    return torch.tensor([[4.0, 0.0, 0.0], [1.3, 3.6, 0.0], [-0.8, 0.9, 3.9]], dtype=torch.float64)


def in_cell(n: int, cell: torch.Tensor, seed: int) -> torch.Tensor:
    return random_cloud(n, box=1.0, seed=seed) @ cell


PERIODIC_CASES = {
    # name: (pos, cell, pbc, cutoff)
    "silicon": (*rattled_silicon(), [True, True, True], 4.0),
    # a cell shorter than the cutoff: an atom meets its own images (i == j, S ≠ 0)
    "small_cell": (torch.tensor([[0.1, 0.2, 0.3], [1.3, 1.1, 1.4]], dtype=torch.float64),
                   torch.eye(3, dtype=torch.float64) * 2.5, [True, True, True], 3.0),
    "triclinic": (in_cell(10, triclinic_cell(), 4), triclinic_cell(), [True, True, True], 3.5),
    # mixed pbc; atoms stick out of the cell along the non-periodic axes
    "slab": (in_cell(10, triclinic_cell(), 5) + torch.tensor([0.0, 0.0, 5.0]), triclinic_cell(),
             [True, True, False], 3.0),
    "wire": (in_cell(8, triclinic_cell(), 6) * torch.tensor([1.0, 2.0, 2.0]), triclinic_cell(),
             [True, False, False], 3.0),
    "skewed_mixed": (in_cell(8, triclinic_cell(), 7), triclinic_cell(), [False, True, True], 3.0),
}


@pytest.mark.parametrize("case", PERIODIC_CASES)
def test_periodic_cells_match_brute_force(case):
    pos, cell, pbc, cutoff = PERIODIC_CASES[case]
    edge_index, shift = radius_graph(pos, cutoff, cell=cell, pbc=torch.tensor(pbc))
    expected = brute_force_edges(pos, cutoff, cell, pbc)
    got = edge_set(edge_index, shift, cell)
    assert got == expected
    assert any(any(e[2:]) for e in got)  # periodic images were used
    if case == "small_cell":
        own_images = [e for e in got if e[0] == e[1]]
        assert own_images and all(any(e[2:]) for e in own_images)
        self_edges = edge_index[0] == edge_index[1]
        assert shift[self_edges].norm(dim=-1).min() == pytest.approx(2.5)


def test_mixed_pbc_with_a_zero_vector_along_the_open_axis():
    """ASE's usual slab/molecule-in-a-box cells leave the non-periodic vector zero."""
    cell = torch.diag(torch.tensor([3.0, 3.5, 0.0], dtype=torch.float64))
    pos = random_cloud(8, box=3.0, seed=8)
    pbc = torch.tensor([True, True, False])
    edge_index, shift = radius_graph(pos, 2.5, cell=cell, pbc=pbc)
    got = {(j, i, round(float(s[0] / 3.0)), round(float(s[1] / 3.5)), 0)
           for (j, i), s in zip(edge_index.t().tolist(), shift)}
    assert shift[:, 2].abs().max() == 0 and got == brute_force_edges(pos, 2.5, cell, pbc)


def random_molecule(n: int, seed: int) -> Structure:
    return Structure(z=np.full(n, 6), positions=random_cloud(n, 4.0, seed).numpy())


def structures() -> list[Structure]:
    """Molecules, a periodic cell, a small cell (own images) and a slab, for batches."""
    si_pos, si_cell = rattled_silicon()
    _, small_cell, _, _ = PERIODIC_CASES["small_cell"]
    slab_pos, slab_cell, slab_pbc, _ = PERIODIC_CASES["slab"]
    return [random_molecule(7, 10),
            Structure(z=np.full(8, 14), positions=si_pos.numpy(), cell=si_cell.numpy(), pbc=np.ones(3, dtype=bool)),
            random_molecule(12, 11),
            Structure(z=np.array([1, 1]), positions=PERIODIC_CASES["small_cell"][0].numpy(), cell=small_cell.numpy(),
                      pbc=np.ones(3, dtype=bool)),
            Structure(z=np.full(10, 6), positions=slab_pos.numpy(), cell=slab_cell.numpy(), pbc=np.array(slab_pbc))]


def edges_with_shifts(edge_index, shift) -> set[tuple]:
    edges = {(j, i, *s) for (j, i), s in zip(edge_index.t().tolist(), shift.tolist())}
    assert len(edges) == edge_index.shape[1]
    return edges


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("max_neighbors", [None, 3])
@pytest.mark.parametrize("copies", [1, 7])  # 7: 21 overlapping molecules share one vesin call on a 3×3×3 grid
def test_batch_equals_per_structure_graphs(dtype, max_neighbors, copies):
    data = [s.to_data(dtype) for s in structures() * copies]
    batch = Batch.from_data_list(data)
    edge_index, shift = batch_radius_graph(batch, 3.0, max_neighbors)
    assert shift.dtype == dtype and edge_index.dtype == torch.long
    expected = set()
    for g, d in enumerate(data):
        e, s = radius_graph(d.pos, 3.0, max_neighbors, d.cell[0], d.pbc[0])
        expected |= edges_with_shifts(e + int(batch.ptr[g]), s)
    assert edges_with_shifts(edge_index, shift) == expected
    graph_of_edge = batch.batch[edge_index]
    assert torch.equal(graph_of_edge[0], graph_of_edge[1])  # no edge between structures


@pytest.mark.parametrize("kinds", ["molecules", "periodic"])
def test_batches_of_one_kind_and_empty_structures(kinds):
    data = [s.to_data() for s in structures() if s.pbc.any() == (kinds == "periodic")]
    edge_index, _ = batch_radius_graph(Batch.from_data_list(data), 3.0)
    per_structure = [radius_graph(d.pos, 3.0, None, d.cell[0], d.pbc[0])[0] for d in data]
    assert edge_index.shape[1] == sum(e.shape[1] for e in per_structure) > 0
    empty_index, empty_shift = radius_graph(torch.empty(0, 3), 3.0)
    assert empty_index.shape == (2, 0) and empty_shift.shape == (0, 3)


@pytest.mark.parametrize("periodic", [False, True])
def test_max_neighbors_keeps_the_nearest(periodic):
    cell = triclinic_cell() if periodic else None
    pos = in_cell(12, cell, 1) if periodic else random_cloud(n=30, box=4.0, seed=1)
    pbc = torch.ones(3, dtype=torch.bool) if periodic else None
    cutoff, cap = 3.0, 4
    full_index, full_shift = radius_graph(pos, cutoff, cell=cell, pbc=pbc)
    index, shift = radius_graph(pos, cutoff, max_neighbors=cap, cell=cell, pbc=pbc)
    kept = edge_set(index, shift, cell)
    assert kept <= edge_set(full_index, full_shift, cell)

    def lengths_by_target(edge_index, edge_shift):
        lengths = (pos[edge_index[0]] - pos[edge_index[1]] + edge_shift).norm(dim=-1)
        return [sorted(lengths[edge_index[1] == i].tolist()) for i in range(pos.shape[0])]

    for got, candidates in zip(lengths_by_target(index, shift), lengths_by_target(full_index, full_shift)):
        assert got == pytest.approx(candidates[:cap])
    assert int(torch.bincount(full_index[1]).max()) > cap  # the cap did bind


def crossing_structures(k: int, step: float = 1e-6) -> tuple[Structure, Structure]:
    """A molecule in which atom 4 moves by ``step`` Å radially across the distance of atom 0's k-th nearest
    neighbour (atom 2 for k = 2), so a cap of k swaps which of the two atom 0 keeps."""
    directions = torch.tensor([[1.0, 0.2, 0.1], [-0.3, 1.0, 0.4], [0.2, -0.5, 1.0], [-1.0, -0.6, -0.3]],
                              dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    radii = torch.tensor([1.1, 1.5, 2.2, 1.5 + step / 2], dtype=torch.float64)  # atom 0's neighbours 1..4
    assert k == 2 and sorted(radii.tolist())[k - 1] == 1.5

    def structure(r4: float) -> Structure:
        pos = torch.cat([torch.zeros(1, 3, dtype=torch.float64),
                         directions * torch.cat([radii[:3], torch.tensor([r4], dtype=torch.float64)])[:, None]])
        return Structure(z=np.array([6, 1, 8, 7, 1]), positions=pos.numpy())

    return structure(1.5 + step / 2), structure(1.5 - step / 2)


def painn_energy(structure: Structure, max_neighbors: int | None) -> float:
    """Energy (eV) of a randomly initialised PaiNN; the graph is built by the model (ensure_graph)."""
    batch = Batch.from_data_list([structure.to_data(torch.float64)])
    torch.manual_seed(0)
    model = PaiNN(hidden_channels=16, num_layers=2, num_rbf=8, cutoff=3.0, max_neighbors=max_neighbors,
                  force_mode="direct").double()
    with torch.no_grad():
        return float(model(batch)["energy"][0])


def test_neighbor_cap_makes_the_energy_discontinuous():
    """Why the cap is opt-in: moving one atom by 1e-6 Å changes the uncapped energy by ~|F|·1e-6, but with
    max_neighbors=k the same move swaps atom 0's k-th neighbour and the energy jumps."""
    before, after = crossing_structures(k=2)
    uncapped = abs(painn_energy(after, None) - painn_energy(before, None))
    capped = abs(painn_energy(after, 2) - painn_energy(before, 2))
    assert uncapped < 1e-5
    assert capped > 1e3 * uncapped and capped > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_graphs_equal_cpu_graphs(dtype):
    batch = Batch.from_data_list([s.to_data(dtype) for s in structures()])
    cpu_index, cpu_shift = batch_radius_graph(batch, 3.0)
    index, shift = batch_radius_graph(batch.to("cuda"), 3.0)
    assert index.device.type == shift.device.type == "cuda" and shift.dtype == dtype

    def edges(edge_index, edge_shift):  # vesin's CUDA pair order differs from its CPU order
        return {(j, i, *[round(x, 3) for x in s]) for (j, i), s in zip(edge_index.t().tolist(), edge_shift.tolist())}

    assert edges(index.cpu(), shift.cpu()) == edges(cpu_index, cpu_shift)
