"""Teachers: forces are −∇U, Hessians are ∂²U (finite differences, symmetry), element checks, MACE loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_batch, rattled, shared_file, tiny_mace
from hessdistill.hessian.finite_difference import finite_difference_force_jacobian
from hessdistill.teachers.base import UnsupportedElementError


def energy_fn(teacher, batch):
    def energy(pos):
        b = batch.clone()
        b.pos = pos
        with torch.no_grad():
            return teacher.energy(b)

    return energy


def force_fn(teacher, batch):
    def forces(pos):
        b = batch.clone()
        b.pos = pos
        return teacher.energy_forces(b)[1]

    return forces


def fd_forces(teacher, batch, delta: float) -> torch.Tensor:
    """−∂U/∂r by central differences of the energy, (Ntot, 3)."""
    energy = energy_fn(teacher, batch)
    pos = batch.pos.detach()
    out = torch.zeros_like(pos)
    for a in range(pos.shape[0]):
        for x in range(3):
            step = torch.zeros_like(pos)
            step[a, x] = delta
            out[a, x] = -(energy(pos + step).sum() - energy(pos - step).sum()) / (2 * delta)
    return out


def check_teacher_derivatives(teacher, atoms_list, force_tol: float, hessian_rtol: float):
    batch = make_batch(atoms_list)
    energy, forces = teacher.energy_forces(batch)
    assert energy.shape == (len(atoms_list),) and forces.shape == (batch.pos.shape[0], 3)
    assert forces.abs().max() > 1e-2
    # δ = 1e-5 Å: ANI's third derivatives are large enough that δ = 1e-4 leaves a 1e-5 eV/Å truncation error
    torch.testing.assert_close(forces, fd_forces(teacher, make_batch(atoms_list), 1e-5), atol=force_tol, rtol=0)

    out = teacher.hessians(make_batch(atoms_list))

    e2, f2, hessians = out.energy, out.forces, out.hessians
    torch.testing.assert_close(e2, energy.detach())
    torch.testing.assert_close(f2, forces.detach())
    for atoms, h in zip(atoms_list, hessians):
        single = make_batch([atoms])
        assert h.shape == (3 * len(atoms), 3 * len(atoms))
        assert (h - h.T).abs().max() < 1e-8 * max(1.0, float(h.abs().max()))
        fd = finite_difference_force_jacobian(force_fn(teacher, single), single.pos, delta=1e-4)
        assert float((h + fd).norm() / h.norm()) < hessian_rtol
    return hessians


# ---- ANI-1x ------------------------------------------------------------------------------------------------
def test_ani_forces_and_hessian_match_finite_differences(ani_teacher):
    # ANI's CELU activations make its Hessian only piecewise continuous (the second derivative jumps where a
    # pre-activation crosses 0), so the Hessian is checked to ~1 % against central differences; forces are
    # continuous and checked tightly. test_hessian.py checks ANI Hessians exactly against autograd Jacobians.
    check_teacher_derivatives(ani_teacher, [rattled("CH3OH", seed=1), rattled("HCN", seed=2)],
                              force_tol=1e-6, hessian_rtol=3e-2)


def test_ani_energy_is_in_ev_and_invariant(ani_teacher):
    atoms = rattled("H2O", seed=0)
    e0 = ani_teacher.energy_forces(make_batch([atoms]))[0]
    # ωB97X/6-31G(d) water is about −76.4 Ha = −2079 eV
    assert -2090 < float(e0) < -2070
    moved = atoms.copy()
    moved.rotate(37, "x", rotate_cell=False)
    moved.translate([1.0, -2.0, 0.5])
    e1 = ani_teacher.energy_forces(make_batch([moved]))[0]
    assert float(e1) == pytest.approx(float(e0), abs=1e-8)
    assert ani_teacher.elements == frozenset({1, 6, 7, 8})
    # a padded batch of unequal molecules gives each molecule's own energy and forces
    others = [rattled("CH3OH", seed=1), rattled("HCN", seed=2)]
    energies, forces = ani_teacher.energy_forces(make_batch([atoms, *others]))
    offset = 0
    for k, a in enumerate([atoms, *others]):
        e, f = ani_teacher.energy_forces(make_batch([a]))
        assert float(energies[k]) == pytest.approx(float(e[0]), abs=1e-9)
        torch.testing.assert_close(forces[offset : offset + len(a)], f, atol=1e-10, rtol=0)
        offset += len(a)


def test_ani_rejects_unsupported_elements_naming_the_structure(ani_teacher):
    batch = make_batch([rattled("H2O"), rattled("SH2"), rattled("CH4")])
    with pytest.raises(UnsupportedElementError, match=r"\[16\].*structure\(s\) \[1\]"):
        ani_teacher.energy_forces(batch)
    batch = make_batch([rattled("H2O"), rattled("SH2")])
    batch.idx = torch.tensor([7, 42])  # store indices, as precompute sets them
    with pytest.raises(UnsupportedElementError, match=r"structure\(s\) \[42\]"):
        ani_teacher.hessians(batch)


def test_precompute_reports_store_index_of_unsupported_structure(tmp_path, ani_teacher):
    from conftest import label_with
    from hessdistill.data.store import HessianStore, write_structures
    from hessdistill.teacher_step.run import precompute_teacher

    structures = label_with(ani_teacher, [rattled("H2O"), rattled("CH4")])
    sulfur = structures[0].__class__.from_atoms(rattled("SH2"))
    sulfur.energy, sulfur.forces = -10.0, np.zeros((3, 3))
    path = tmp_path / "s.h5"
    write_structures(path, [structures[0], structures[1], sulfur])
    store = HessianStore(path, mode="a")
    with pytest.raises(UnsupportedElementError, match=r"structure\(s\) \[2\]"):
        precompute_teacher(store, ani_teacher, batch_size=8, progress=False)
    store.close()


def test_precompute_is_resumable_and_matches_teacher(tmp_path, ani_teacher):
    from conftest import label_with
    from hessdistill.data.store import HessianStore, write_structures
    from hessdistill.teacher_step.run import precompute_teacher

    atoms_list = [rattled("H2O", seed=1), rattled("NH3", seed=2), rattled("CH4", seed=3)]
    path = tmp_path / "s.h5"
    write_structures(path, label_with(ani_teacher, atoms_list))
    store = HessianStore(path, mode="a")
    group = store.create_teacher("ani1x", {})
    group["done"][1] = True  # pretend a killed run finished structure 1 (with zeros in its slot)
    result = precompute_teacher(store, ani_teacher, batch_size=2, progress=False)
    assert result["computed"] == 2 and result["total"] == 3
    assert result["max_asymmetry"] < 1e-8
    assert store.teacher_done("ani1x").all()
    assert np.all(store.hessian("ani1x", 1) == 0)  # skipped: already marked done
    for i in (0, 2):
        (h,) = ani_teacher.hessians(make_batch([atoms_list[i]])).hessians
        np.testing.assert_allclose(store.hessian("ani1x", i), h.numpy(), rtol=1e-5, atol=1e-4)
        energy, forces = store.teacher_labels("ani1x", i)
        np.testing.assert_allclose(forces, store.structure(i).forces, atol=1e-12)  # labelled by the same teacher
    assert precompute_teacher(store, ani_teacher, progress=False)["computed"] == 0
    store.close()


# ---- MACE --------------------------------------------------------------------------------------------------
def test_tiny_mace_teacher_hessian_matches_finite_differences():
    pytest.importorskip("mace")
    from hessdistill.teachers.mace import MACETeacher

    teacher = MACETeacher(tiny_mace(), name="tiny")
    assert teacher.elements == frozenset({1, 6, 7, 8}) and teacher.dtype == torch.float64
    # MACE is smooth (SiLU gates, polynomial cutoff): central differences converge, so the check is tight
    hessians = check_teacher_derivatives(teacher, [rattled("H2O", seed=3), rattled("CH3OH", seed=4)],
                                         force_tol=1e-7, hessian_rtol=1e-6)
    assert all(h.abs().max() > 1e-3 for h in hessians)
    with pytest.raises(UnsupportedElementError):
        teacher.energy_forces(make_batch([rattled("SH2")]))


def test_cuequivariance_models_are_converted_to_e3nn(monkeypatch):
    """cuEquivariance kernels break under autograd + vmap: such a model is swapped for mace-torch's e3nn copy."""
    pytest.importorskip("mace")
    import mace.cli.convert_cueq_e3nn as convert

    from hessdistill.teachers import mace as mace_teacher

    plain = tiny_mace()
    assert not mace_teacher.uses_cuequivariance(plain)
    assert mace_teacher.without_cuequivariance(plain) is plain
    kernel = type("SymmetricContraction", (torch.nn.Module,), {"__module__": "cuequivariance_torch.operations"})
    accelerated = tiny_mace()
    accelerated.products[0].add_module("cueq_kernel", kernel())
    assert mace_teacher.uses_cuequivariance(accelerated)
    converted = []
    monkeypatch.setattr(convert, "run", lambda model, return_model: converted.append(model) or plain)
    teacher = mace_teacher.MACETeacher(accelerated, name="cueq")
    assert converted == [accelerated] and teacher.model is plain


def test_real_mace_model_file_loads_and_gives_symmetric_hessian():
    path = shared_file("teachers/mace_spice_test.model")
    pytest.importorskip("mace")
    from hessdistill.teachers.mace import MACETeacher

    teacher = MACETeacher(str(path), name="mace_spice_test")
    assert {1, 6, 7, 8, 16} <= set(teacher.elements)
    assert teacher.r_max > 0 and teacher.dtype == torch.float64
    atoms_list = [rattled("H2O", seed=5), rattled("CH3SH", seed=6)]  # sulfur is in this model
    out = teacher.hessians(make_batch(atoms_list))
    energy, forces, hessians = out.energy, out.forces, out.hessians
    assert torch.isfinite(energy).all() and torch.isfinite(forces).all()
    for atoms, h in zip(atoms_list, hessians):
        assert h.shape == (3 * len(atoms), 3 * len(atoms))
        assert h.abs().max() > 1.0
        assert (h - h.T).abs().max() < 1e-8 * float(h.abs().max())
    single = make_batch(atoms_list[:1])
    fd = finite_difference_force_jacobian(force_fn(teacher, single), single.pos, delta=1e-4)
    assert float((hessians[0] + fd).norm() / hessians[0].norm()) < 1e-5


def test_mace_teacher_rejects_missing_file_and_unknown_head(tmp_path):
    pytest.importorskip("mace")
    from hessdistill.teachers.mace import MACETeacher

    with pytest.raises(FileNotFoundError, match="nowhere.model"):
        MACETeacher(str(tmp_path / "nowhere.model"))
    with pytest.raises(ValueError, match="head 'spice' not in model heads"):
        MACETeacher(tiny_mace(), head="spice")


def test_vmap_path_is_really_taken_for_ani_and_mace(ani_teacher):
    """The batched vmap Hessian path must not fall back to the loop for our teachers (it would only be slower)."""
    from hessdistill.hessian import rows as hess
    from hessdistill.teachers.mace import MACETeacher

    before = hess.VMAP_FALLBACKS["count"]
    batch = make_batch([rattled("H2O", seed=3), rattled("CH3OH", seed=4)])
    for teacher in (ani_teacher, MACETeacher(tiny_mace(), name="tiny_mace")):
        teacher.hessians(batch, strategy="vmap")
    assert hess.VMAP_FALLBACKS["count"] == before
