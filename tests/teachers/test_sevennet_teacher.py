"""SevenNet-0 (weights in the sevenn wheel): autograd forces and Hessians against its own ASE calculator and central
finite differences of that calculator's forces, for a molecule and a periodic cell."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk, molecule

from conftest import compose_config, make_batch
from hessdistill.teachers import instantiate_teacher
from hessdistill.teachers.finite_difference import FiniteDifferenceTeacher

pytest.importorskip("sevenn")


@pytest.fixture(scope="module")
def sevennet():
    return instantiate_teacher(compose_config("precompute", ["teacher=sevennet"]).teacher)


@pytest.fixture(scope="module")
def calculator(sevennet):
    """sevenn's own ASE calculator on a copy of the same SevenNet-0 model (a copy: it sets the model unbatched)."""
    import copy

    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(copy.deepcopy(sevennet.model), file_type="model_instance", device="cpu")


def periodic():
    atoms = bulk("Si", "diamond", a=5.43)  # primitive cell: 2 atoms, edges across the boundary
    atoms.rattle(0.05, seed=2)
    return atoms


def rattled_water():
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.mark.parametrize("make", [rattled_water, periodic], ids=["molecule", "periodic"])
def test_hessian_matches_finite_differences_of_the_sevennet_calculator(sevennet, calculator, make):
    atoms = make()
    out = sevennet.hessians(make_batch([atoms], torch.float32), strategy="loop")
    # δ = 1e-3 Å: SevenNet computes in float32 (round-off ~1e-4 of H at this step, truncation below it)
    reference = FiniteDifferenceTeacher(calculator=calculator, delta=1e-3).hessians(make_batch([atoms]))
    assert float(out.energy[0]) == pytest.approx(float(reference.energy[0]), abs=1e-4)
    torch.testing.assert_close(out.forces.double(), reference.forces, rtol=0, atol=1e-5)
    assert out.forces.abs().max() > 0.1
    h, h_fd = out.hessians[0].double(), reference.hessians[0]
    assert float((h - h_fd).norm() / h.norm()) < 2e-3
    assert float((h - h.T).abs().max()) < 1e-5 * float(h.abs().max())


def test_sampled_rows_equal_the_full_hessian_and_unknown_files_are_named(sevennet, tmp_path):
    atoms = periodic()
    full = sevennet.hessians(make_batch([atoms], torch.float32), strategy="loop").hessians[0]
    rows = torch.tensor([[1, 4]])
    lanes = sevennet.hessian_rows(make_batch([atoms], torch.float32), rows).rows
    torch.testing.assert_close(lanes.reshape(2, -1), full[[1, 4]], rtol=1e-5, atol=1e-5)
    assert sevennet.elements >= {14, 8, 1} and sevennet.dtype == torch.float32
    from hessdistill.teachers.sevennet import SevenNetTeacher

    with pytest.raises(FileNotFoundError, match="SevenNet checkpoint not found: .*missing.pth"):
        SevenNetTeacher(str(tmp_path / "missing.pth"))
