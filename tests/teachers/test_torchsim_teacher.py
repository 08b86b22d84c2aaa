"""torch-sim models as teachers: MACE through torch-sim's MaceModel (detached outputs: finite-difference Hessians)
equals our autograd MACE teacher; an analytic potential (differentiable energy: autograd Hessians) from the Hydra
config equals finite differences of its −∇U."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from conftest import compose_config, make_batch, rattled, shared_file
from hessdistill.teachers import instantiate_teacher
from hessdistill.teachers.finite_difference import FiniteDifferenceTeacher

pytest.importorskip("torch_sim")

LJ_ARGON = ["teacher=torchsim", "+teacher.model._target_=torch_sim.models.lennard_jones.LennardJonesModel",
            "+teacher.model.sigma=3.405", "+teacher.model.epsilon=0.0104", "+teacher.model.cutoff=6.0",
            "+teacher.model.device=cpu", "+teacher.model.dtype._target_=hydra.utils.get_object",
            "+teacher.model.dtype.path=torch.float64", "teacher.name=lj_argon"]


def torchsim_mace(path):
    """torch-sim's MaceModel around a MACE file; this older file keeps atomic_numbers and r_max as plain attributes,
    which current mace-torch (and torch-sim) expect as tensor buffers."""
    from torch_sim.models.mace import MaceModel

    from hessdistill.teachers.mace import load_mace_model

    model = load_mace_model(path, torch.float64)
    for name, value in (("atomic_numbers", torch.tensor([int(z) for z in model.atomic_numbers])),
                        ("r_max", torch.tensor(float(model.r_max), dtype=torch.float64))):
        delattr(model, name)
        model.register_buffer(name, value)
    return MaceModel(model, device=torch.device("cpu"), dtype=torch.float64)


def test_torchsim_mace_hessians_equal_the_mace_teacher():
    path = shared_file("teachers/mace_spice_test.model")
    from hessdistill.teachers.mace import MACETeacher
    from hessdistill.teachers.torchsim import TorchSimTeacher

    teacher = TorchSimTeacher(torchsim_mace(path), name="ts_mace")
    assert not teacher.autograd and "finite differences" in teacher.method  # MaceModel detaches its outputs
    reference = MACETeacher(str(path))
    assert teacher.elements == reference.elements
    atoms = [rattled("H2O", seed=1), rattled("CH3SH", seed=2)]
    got, want = teacher.hessians(make_batch(atoms)), reference.hessians(make_batch(atoms))
    torch.testing.assert_close(got.energy, want.energy, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.forces, want.forces, rtol=0, atol=1e-10)
    for h, h_ref in zip(got.hessians, want.hessians):
        assert float((h - h_ref).norm() / h_ref.norm()) < 1e-7  # central differences, δ = 1e-5 Å in float64
    rows = torch.tensor([[0, 4], [1, 7]])
    lanes = teacher.hessian_rows(make_batch(atoms), rows).rows
    lanes_ref = reference.hessian_rows(make_batch(atoms), rows).rows
    assert float((lanes - lanes_ref).norm() / lanes_ref.norm()) < 1e-7


def test_differentiable_torchsim_model_from_config_gets_autograd_hessians():
    teacher = instantiate_teacher(compose_config("precompute", LJ_ARGON).teacher)
    assert teacher.autograd and teacher.name == "lj_argon" and teacher.dtype == torch.float64
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.05, seed=0)
    out = teacher.hessians(make_batch([atoms]))
    fd = FiniteDifferenceTeacher.from_teacher(teacher).hessians(make_batch([atoms]))
    h = out.hessians[0]
    assert h.abs().max() > 0.1 and float((h - h.T).abs().max()) < 1e-12
    assert float((h - fd.hessians[0]).norm() / h.norm()) < 1e-8
    energy, forces = teacher.energy_forces(make_batch([atoms]))
    # forces are −∇U of the same energy (torch-sim 0.3.0's LJ forces are twice that): ASE's LJ agrees
    from ase.calculators.lj import LennardJones

    atoms.calc = LennardJones(sigma=3.405, epsilon=0.0104, rc=6.0)
    torch.testing.assert_close(forces, torch.as_tensor(atoms.get_forces()), rtol=0, atol=1e-10)


def test_forced_finite_differences_and_mixed_pbc_refusal():
    teacher = instantiate_teacher(compose_config("precompute", [*LJ_ARGON, "teacher.hessian=finite_difference"])
                                  .teacher)
    assert not teacher.autograd
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.05, seed=1)
    molecule = atoms.copy()
    molecule.pbc = False
    molecule.cell = [0, 0, 0]
    with pytest.raises(ValueError, match="one pbc flag per state: this batch mixes periodic and non-periodic"):
        teacher.energy_forces(make_batch([atoms, molecule]))
    from hessdistill.teachers.torchsim import TorchSimTeacher

    with pytest.raises(ValueError, match="hessian must be one of"):
        TorchSimTeacher(teacher.model, hessian="exact")
