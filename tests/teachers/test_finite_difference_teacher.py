"""FiniteDifferenceTeacher: FD Hessians vs autograd (MACE, ANI), the δ sweep behind the default step, batched
vs calculator path, precompute, periodic cells, element checks and the Hydra configs. Hessians in eV/Å²."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import make_batch, rattled, write_labelled_store
from hessdistill.hessian.finite_difference import default_delta
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.teachers.base import AutogradTeacher, Teacher, UnsupportedElementError
from hessdistill.teachers.finite_difference import FiniteDifferenceTeacher

MOLECULES = ("H2O", "NH3")


def molecules():
    return [rattled(name, seed=3 + k) for k, name in enumerate(MOLECULES)]


def relative_error(fd_teacher, reference, atoms_list) -> float:
    """Worst ‖H_fd − H_ref‖ / ‖H_ref‖ over the structures; reference: a teacher with autograd Hessians."""
    ref = reference.hessians(make_batch(atoms_list, reference.dtype)).hessians
    fd = fd_teacher.hessians(make_batch(atoms_list, fd_teacher.dtype)).hessians
    return max(float((h.double() - r.double()).norm() / r.double().norm()) for h, r in zip(fd, ref))


@pytest.fixture(scope="module")
def mace64():
    pytest.importorskip("mace")
    from conftest import tiny_mace
    from hessdistill.teachers.mace import MACETeacher

    return MACETeacher(tiny_mace(), name="tiny")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_default_delta_sits_near_the_error_minimum_for_smooth_mace(dtype):
    pytest.importorskip("mace")
    from conftest import tiny_mace
    from hessdistill.teachers.mace import MACETeacher

    teacher = MACETeacher(tiny_mace(), name="tiny", dtype=dtype)
    deltas = [1e-2, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    err = {d: relative_error(FiniteDifferenceTeacher.from_teacher(teacher, delta=d), teacher, molecules())
           for d in deltas}
    default = default_delta(teacher.dtype)
    assert FiniteDifferenceTeacher.from_teacher(teacher).delta == default
    best = min(err.values())
    # truncation at large δ (∝ δ²), round-off at the smallest δ (∝ ε/δ), the default within 4× of the minimum
    assert err[1e-2] > 3 * err[default] and err[1e-7] > 3 * best
    assert err[default] < 4 * best
    assert err[default] < (1e-8 if dtype == "float64" else 1e-3)


def test_ani_fd_hessians_match_autograd_through_calculator_and_batched(ani_teacher):
    # through an ASE calculator at the calculator default δ = 1e-3 Å: ANI's CELU kinks cost ~1 % there
    calc = FiniteDifferenceTeacher(TorchCalculator(ani_teacher), name="ani_calc", elements=[1, 6, 7, 8])
    assert calc.delta == 1e-3
    assert relative_error(calc, ani_teacher, molecules()) < 3e-2
    # batched from the teacher at its float64 default δ = 1e-5 Å: no kink straddled, near round-off
    batched = FiniteDifferenceTeacher.from_teacher(ani_teacher)
    assert batched.name == "ani1x_fd" and batched.level_of_theory == ani_teacher.level_of_theory
    assert relative_error(batched, ani_teacher, molecules()) < 1e-6
    asymmetry = batched.hessians(make_batch(molecules(), batched.dtype)).asymmetry
    assert (asymmetry < 1e-4).all() and asymmetry.shape == (2,)


def test_batched_from_teacher_equals_calculator_path(mace64):
    atoms_list = [rattled("NH3", seed=1), rattled("H2O", seed=2)]
    via_calc = FiniteDifferenceTeacher(TorchCalculator(mace64), name="c", delta=1e-3)
    by_calc = via_calc.hessians(make_batch(atoms_list))
    e_c, f_c, h_c = by_calc.energy, by_calc.forces, by_calc.hessians
    for max_batch in (256, 7):  # 7: copies of one structure split across calls, and calls mixing structures
        batched = FiniteDifferenceTeacher.from_teacher(mace64, delta=1e-3, max_batch=max_batch)
        out = batched.hessians(make_batch(atoms_list))
        e_b, f_b, h_b = out.energy, out.forces, out.hessians
        torch.testing.assert_close(e_b, e_c, atol=1e-10, rtol=0)
        torch.testing.assert_close(f_b, f_c, atol=1e-10, rtol=0)
        for hb, hc, atoms in zip(h_b, h_c, atoms_list):
            assert hb.shape == (3 * len(atoms), 3 * len(atoms))
            torch.testing.assert_close(hb, hc, atol=1e-8, rtol=0)
        torch.testing.assert_close(out.asymmetry, by_calc.asymmetry, atol=1e-8, rtol=0)
    assert all(torch.equal(h, h.T) for h in h_b)  # returned symmetrised; the raw asymmetry is kept apart


def test_precompute_fills_store_with_fd_teacher(tmp_path, ani_teacher):
    from hessdistill.data.store import HessianStore

    fd = FiniteDifferenceTeacher.from_teacher(ani_teacher, max_batch=64)
    path = write_labelled_store(tmp_path / "fd.h5", fd, names=MOLECULES, per_molecule=2)
    store = HessianStore(path)
    try:
        assert store.teacher_done("ani1x_fd").all()
        for i in range(len(store)):
            (h,) = ani_teacher.hessians(make_batch([store.structure(i).to_atoms()])).hessians
            np.testing.assert_allclose(store.hessian("ani1x_fd", i), h.numpy(), rtol=1e-4, atol=1e-3)
    finally:
        store.close()


def test_periodic_emt_calculator_with_any_element():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[0] = 13  # one Al: not a pure-element crystal
    atoms.rattle(stdev=0.05, seed=0)
    from ase.calculators.emt import EMT

    coarse = FiniteDifferenceTeacher(EMT(), name="emt")  # elements=None: accepts anything
    fine = FiniteDifferenceTeacher(EMT(), name="emt", delta=1e-5)  # EMT computes in float64
    batch = make_batch([atoms])
    assert bool(batch.pbc.all())
    out = fine.hessians(batch)
    energy, forces, (h,) = out.energy, out.forces, out.hessians
    (h_coarse,) = coarse.hessians(make_batch([atoms])).hessians
    atoms.calc = EMT()
    assert float(energy[0]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(forces.numpy(), atoms.get_forces(), atol=1e-10)
    assert float((h - h_coarse).norm() / h.norm()) < 1e-4
    assert float(out.asymmetry[0]) < 1e-5 * float(h.abs().max())
    # periodic crystal: rigid translations cost nothing (acoustic sum rule, rows sum to 0 over atoms)
    assert h.view(4, 3, 4, 3).sum(dim=2).abs().max() < 1e-5 * float(h.abs().max())
    # the Teacher contract without a differentiable energy (no `energy` to call and fail)
    assert isinstance(fine, Teacher) and not isinstance(fine, AutogradTeacher)


def test_periodic_mace_fd_matches_autograd(mace64):
    atoms = rattled("H2O", seed=7)
    atoms.set_cell([3.5, 3.5, 3.5])  # smaller than r_max = 4 Å: the molecule sees its periodic images
    atoms.pbc = True
    fd = FiniteDifferenceTeacher.from_teacher(mace64)
    assert relative_error(fd, mace64, [atoms]) < 1e-7
    atoms.pbc = False
    (isolated,) = mace64.hessians(make_batch([atoms])).hessians
    atoms.pbc = True
    (periodic,) = fd.hessians(make_batch([atoms])).hessians
    assert float((periodic - isolated).abs().max()) > 1e-6  # the cell really was used


def test_unsupported_element_is_a_clear_error(ani_teacher):
    from ase.calculators.emt import EMT

    cu_only = FiniteDifferenceTeacher(EMT(), name="emt_cu", elements=[29])
    alloy = bulk("Cu", "fcc", a=3.6, cubic=True)
    alloy.numbers[1] = 13
    with pytest.raises(UnsupportedElementError, match=r"emt_cu.*\[13\].*structure\(s\) \[1\]"):
        cu_only.hessians(make_batch([bulk("Cu", "fcc", a=3.6, cubic=True), alloy]))
    with pytest.raises(UnsupportedElementError, match=r"ani1x_fd.*\[16\]"):
        FiniteDifferenceTeacher.from_teacher(ani_teacher).energy_forces(make_batch([rattled("SH2")]))


def test_hydra_configs_compose_and_instantiate():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hessdistill.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        ase_fd = instantiate(compose(config_name="precompute", overrides=["teacher=ase_fd"]).teacher)
        ani_fd = instantiate(compose(config_name="precompute", overrides=["teacher=ani1x_fd"]).teacher)
    assert isinstance(ase_fd, FiniteDifferenceTeacher) and ase_fd.name == "emt_fd" and ase_fd.delta == 1e-3
    assert 29 in ase_fd.elements and ase_fd.dtype == torch.float64
    assert isinstance(ani_fd, FiniteDifferenceTeacher) and ani_fd.name == "ani1x_fd"
    assert ani_fd.delta == 1e-5 and ani_fd.elements == frozenset({1, 6, 7, 8}) and ani_fd.max_batch == 256
    energy, forces = ani_fd.energy_forces(make_batch([rattled("H2O")]))
    assert -2090 < float(energy[0]) < -2070 and forces.shape == (3, 3)


def test_precompute_records_raw_asymmetry_and_method(tmp_path, ani_teacher):
    """The store's asymmetry diagnostic holds the FD teacher's raw asymmetry, not that of its symmetrised output."""
    from conftest import label_with, rattled
    from hessdistill.data.store import HessianStore, write_structures
    from hessdistill.integrations.ase_calculator import TorchCalculator
    from hessdistill.teacher_step.run import precompute_teacher
    from hessdistill.teachers.finite_difference import FiniteDifferenceTeacher

    path = tmp_path / "fd.h5"
    write_structures(path, label_with(ani_teacher, [rattled("NH3", seed=1), rattled("H2O", seed=2)]))
    fd = FiniteDifferenceTeacher(TorchCalculator(ani_teacher), name="ani1x_fd", elements=[1, 6, 7, 8], delta=1e-3)
    store = HessianStore(path, mode="a")
    result = precompute_teacher(store, fd, progress=False)
    group = store.teacher_group("ani1x_fd")
    raw = []
    for i in range(len(store)):  # each structure's raw asymmetry, from a batch of that structure alone
        raw.append(float(fd.hessians(make_batch([store.structure(i).to_atoms()])).asymmetry[0]))
    np.testing.assert_allclose(group["asymmetry"][:], raw, rtol=1e-6)
    assert result["max_asymmetry"] == pytest.approx(max(raw))
    assert result["max_asymmetry"] > 1e-3  # ANI through a 1e-3 Å step is visibly non-symmetric before symmetrising
    assert "finite differences" in group.attrs["method"]
    h = store.hessian("ani1x_fd", 0)
    np.testing.assert_allclose(h, h.T, atol=1e-5)
    store.close()


@pytest.mark.parametrize("batched", [False, True])
def test_fd_rows_equal_full_fd_hessian_rows_and_feed_row_subset_precompute(tmp_path, ani_teacher, batched):
    """k rows cost 2k force calls and equal the rows of the full FD Hessian (same step, symmetric teacher)."""
    from conftest import label_with
    from hessdistill.data.store import HessianStore, write_structures
    from hessdistill.teacher_step.run import precompute_teacher

    fd = (FiniteDifferenceTeacher.from_teacher(ani_teacher, delta=1e-5) if batched else
          FiniteDifferenceTeacher(TorchCalculator(ani_teacher), elements=[1, 6, 7, 8], delta=1e-5))
    atoms = [rattled("NH3", seed=1), rattled("CH3OH", seed=2)]
    batch = make_batch(atoms)
    rows = torch.tensor([[0, 5, 11], [2, 7, 17]])
    lanes = fd.hessian_rows(batch, rows).rows
    full = fd.hessians(batch).hessians
    for g, (a, b) in enumerate(zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist())):
        got = lanes[:, a:b].reshape(3, -1)
        torch.testing.assert_close(got, full[g][rows[g]], rtol=1e-6, atol=1e-4)
    path = tmp_path / "rows.h5"
    write_structures(path, label_with(ani_teacher, atoms))
    with HessianStore(path, mode="a") as store:
        precompute_teacher(store, fd, layout="rows", rows_per_structure=2, progress=False)
        exact = ani_teacher.hessians(make_batch(atoms)).hessians
        for i in range(2):
            stored = store.stored_rows(fd.name, i)
            np.testing.assert_allclose(store.hessian_rows(fd.name, i, stored), exact[i].numpy()[stored], atol=1e-3)
