"""Loss terms: values on hand-built tensors, per-structure averaging, and argument errors."""

from __future__ import annotations

import pytest
import torch

from hessdistill import losses


def test_energy_loss_known_value():
    pred = torch.tensor([1.0, 2.0, -1.0])
    ref = torch.tensor([0.0, 4.0, -1.0])
    # residuals 1, −2, 0 → squares 1, 4, 0 → mean 5/3 eV²
    assert losses.energy_loss(pred, ref).item() == pytest.approx(5.0 / 3.0)


def test_force_loss_known_value():
    # structure 0: atoms 0, 1; structure 1: atom 2
    batch = torch.tensor([0, 0, 1])
    ref = torch.zeros(3, 3)
    pred = torch.tensor([[1.0, 0.0, 0.0],    # ‖·‖² = 1
                         [0.0, 2.0, 2.0],    # ‖·‖² = 8
                         [3.0, 0.0, 4.0]])   # ‖·‖² = 25
    # per structure: 1 + 8 = 9 and 25 → mean over the 2 structures = 17 (eV/Å)²
    assert losses.force_loss(pred, ref, batch, 2).item() == pytest.approx(17.0)
    # the reference enters as a difference: shifting both by the same field changes nothing
    shift = torch.randn(3, 3)
    assert losses.force_loss(pred + shift, ref + shift, batch, 2).item() == pytest.approx(17.0, rel=1e-6)


def kd_example():
    """s = 2 rows, 3 atoms (structure 0: atoms 0, 1; structure 1: atom 2); residual = teacher + student."""
    batch = torch.tensor([0, 0, 1])
    residual = torch.tensor([
        [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]],   # lane 0: atom norms 5, 0, 3
        [[0.0, 0.0, 0.0], [0.0, 6.0, 8.0], [0.0, 0.0, 0.0]],   # lane 1: atom norms 0, 10, 0
    ])
    teacher = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0))
    student = residual - teacher  # the loss sees teacher + student = residual
    return student, teacher, batch


def test_hessian_kd_loss_squared_known_value():
    student, teacher, batch = kd_example()
    # structure 0: (1/s) Σ_j ‖row_j‖² = (25 + 100) / 2 = 62.5; structure 1: (9 + 0) / 2 = 4.5 → mean 33.5
    got = losses.hessian_kd_loss(student, teacher, batch, 2, norm="squared")
    assert got.item() == pytest.approx(33.5, rel=1e-6)


def test_hessian_kd_loss_l2_per_atom_known_value():
    student, teacher, batch = kd_example()
    # mean over 2 rows × 3 atoms of the per-atom norms 5, 0, 3, 0, 10, 0 → 18 / 6 = 3 eV/Å²
    got = losses.hessian_kd_loss(student, teacher, batch, 2, norm="l2_per_atom")
    assert got.item() == pytest.approx(3.0, rel=1e-6)


def test_hessian_kd_loss_zero_when_student_rows_are_minus_teacher_rows():
    teacher = torch.randn(3, 5, 3)
    batch = torch.tensor([0, 0, 1, 1, 1])
    for norm in ("squared", "l2_per_atom"):
        assert losses.hessian_kd_loss(-teacher, teacher, batch, 2, norm=norm).item() == pytest.approx(0.0, abs=1e-12)
        assert losses.hessian_kd_loss(teacher, teacher, batch, 2, norm=norm).item() > 1.0


def test_hessian_row_mae_known_value():
    student, teacher, _ = kd_example()
    # Σ|residual| = 7 + 5 + 14 = 26 over 18 entries
    assert losses.hessian_row_mae(student, teacher).item() == pytest.approx(26.0 / 18.0, rel=1e-6)


def random_pair(n_a: int, n_b: int, s: int = 3, seed: int = 0):
    """Predictions and references for two structures of n_a and n_b atoms, as one batch and as two."""
    g = torch.Generator().manual_seed(seed)
    n = n_a + n_b
    data = {
        "e_pred": torch.randn(2, generator=g), "e_ref": torch.randn(2, generator=g),
        "f_pred": torch.randn(n, 3, generator=g), "f_ref": torch.randn(n, 3, generator=g),
        "h_student": torch.randn(s, n, 3, generator=g), "h_teacher": torch.randn(s, n, 3, generator=g),
    }
    batch = torch.tensor([0] * n_a + [1] * n_b)
    parts = []
    for k, atoms in enumerate((slice(0, n_a), slice(n_a, n))):
        parts.append({
            "e_pred": data["e_pred"][k : k + 1], "e_ref": data["e_ref"][k : k + 1],
            "f_pred": data["f_pred"][atoms], "f_ref": data["f_ref"][atoms],
            "h_student": data["h_student"][:, atoms], "h_teacher": data["h_teacher"][:, atoms],
        })
    return data, batch, parts


def all_terms(d, batch, num_graphs, norm="squared"):
    return torch.stack([
        losses.energy_loss(d["e_pred"], d["e_ref"]),
        losses.force_loss(d["f_pred"], d["f_ref"], batch, num_graphs),
        losses.hessian_kd_loss(d["h_student"], d["h_teacher"], batch, num_graphs, norm),
    ])


def test_losses_average_per_structure_so_splitting_a_batch_gives_the_same_loss():
    """A batch of 2 structures of unequal size equals the mean of the two batches of 1 (as under DDP)."""
    data, batch, parts = random_pair(2, 5)
    whole = all_terms(data, batch, 2)
    halves = torch.stack([all_terms(p, torch.zeros(p["f_pred"].shape[0], dtype=torch.long), 1) for p in parts])
    torch.testing.assert_close(whole, halves.mean(0))
    # the force and KD terms are sums over atoms per structure, not means over all atoms of the batch
    per_atom_force = ((data["f_pred"] - data["f_ref"]) ** 2).sum(-1).mean()
    assert not torch.isclose(whole[1], per_atom_force)


def test_l2_per_atom_norm_is_a_mean_over_atoms():
    """The authors' norm averages over atoms, not structures: splitting a batch preserves it only when the
    structures have equal atom counts (documented behaviour; the default "squared" norm always does)."""
    data, batch, parts = random_pair(4, 4)
    whole = losses.hessian_kd_loss(data["h_student"], data["h_teacher"], batch, 2, "l2_per_atom")
    halves = [losses.hessian_kd_loss(p["h_student"], p["h_teacher"], torch.zeros(4, dtype=torch.long), 1,
                                     "l2_per_atom") for p in parts]
    torch.testing.assert_close(whole, torch.stack(halves).mean())

    data, batch, parts = random_pair(1, 6)
    whole = losses.hessian_kd_loss(data["h_student"], data["h_teacher"], batch, 2, "l2_per_atom")
    norms = (data["h_student"] + data["h_teacher"]).norm(dim=-1)  # (s, Ntot)
    torch.testing.assert_close(whole, norms.mean())


def test_kd_loss_gradient_wrt_student_rows():
    """Training backpropagates through the rows: the gradient w.r.t. the student rows is the analytic one."""
    student, teacher, batch = kd_example()
    student = student.clone().requires_grad_(True)
    loss = losses.hessian_kd_loss(student, teacher, batch, 2, norm="squared")
    (grad,) = torch.autograd.grad(loss, student)
    # d/dR of mean_i (1/s) Σ ‖R‖² = 2R / (s·B) with s = 2, B = 2
    torch.testing.assert_close(grad, (student + teacher).detach() / 2.0)


def test_l2_per_atom_gradient_is_finite_where_the_residual_vanishes():
    """Atoms beyond a student's receptive field have exactly zero rows, as may the teacher's (float32 zeros):
    the per-atom norm is not differentiable there, and the gradient must stay finite (zero), not NaN."""
    student, teacher, batch = kd_example()
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone()
    teacher[:, 1] = -student.detach()[:, 1]  # atom 1: residual exactly zero in both lanes
    loss = losses.hessian_kd_loss(student, teacher, batch, 2, norm="l2_per_atom")
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all()
    assert torch.all(grad[:, 1] == 0)
    # elsewhere: d/dR of mean ‖R‖ = R / (‖R‖ · s · Ntot) with s · Ntot = 6
    residual = (student + teacher).detach()
    torch.testing.assert_close(grad[0, 0], residual[0, 0] / (5.0 * 6))


def test_unknown_norm_raises():
    student, teacher, batch = kd_example()
    with pytest.raises(ValueError, match="unknown Hessian-KD norm 'l1'"):
        losses.hessian_kd_loss(student, teacher, batch, 2, norm="l1")
