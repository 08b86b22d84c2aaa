"""Hessian math: row sampling, one-hot lanes, batched VJP rows vs finite differences and full Jacobians,
batched teacher Hessians, and the gradient of the Hessian-KD loss w.r.t. student parameters."""

from __future__ import annotations

import pytest
import torch

from conftest import make_batch, rattled, teacher_lane_rows, tiny_painn
from hessdistill import losses
from hessdistill.hessian.finite_difference import finite_difference_force_jacobian
from hessdistill.hessian.full import batched_hessians
from hessdistill.hessian.rows import (
    force_jacobian_rows,
    resolve_strategy,
    row_lanes,
    rows_generator,
    sample_batch_rows,
    sample_rows,
)

FORCE_MODES = ["direct", "conservative"]


def two_molecules():
    """Two different molecules (3 and 4 atoms): a batch with unequal blocks."""
    return [rattled("H2O", seed=1), rattled("NH3", seed=2)]


def student_outputs(model, atoms_list):
    batch = make_batch(atoms_list)
    out = model(batch, create_graph=True)
    return batch, out


def batch_force_fn(model, batch):
    """pos (Ntot, 3) → the model's forces (Ntot, 3), through the model's own forward (graph fixed by ``batch``)."""

    def forces(pos):
        b = batch.clone()
        b.pos = pos
        return model(b)["forces"].detach()

    return forces


def differentiable_student_forces(model, batch):
    """pos → forces as a differentiable function of its input (``ForceField.outputs``)."""

    def forces(pos):
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        return model.outputs(pos, batch, create_graph=True)[1]

    return forces


def flat_rows(rows, ptr):
    """(B, s) local rows → (B, s) flat indices into the batch's 3·Ntot coordinates."""
    return 3 * ptr[:-1, None] + rows


# ---- sampling and lanes ------------------------------------------------------------------------------------
def test_sample_batch_rows_range_distinct_and_reproducible():
    n_atoms = torch.tensor([2, 5, 3, 1])
    s = 3
    rows = sample_batch_rows(n_atoms, s, torch.Generator().manual_seed(7))
    assert rows.shape == (4, s) and rows.dtype == torch.int64
    for i, n in enumerate(n_atoms.tolist()):
        assert ((rows[i] >= 0) & (rows[i] < 3 * n)).all()
        assert len(set(rows[i].tolist())) == s
    again = sample_batch_rows(n_atoms, s, torch.Generator().manual_seed(7))
    assert torch.equal(rows, again)
    draws = {tuple(sample_batch_rows(n_atoms, s, torch.Generator().manual_seed(k)).flatten().tolist())
             for k in range(10)}
    assert len(draws) > 1  # different seeds give different rows


def test_sample_batch_rows_cover_all_rows_uniformly():
    gen = torch.Generator().manual_seed(0)
    n_atoms = torch.tensor([2, 4])  # 6 and 12 rows
    counts = torch.zeros(2, 12)
    draws = 3000
    for _ in range(draws):
        rows = sample_batch_rows(n_atoms, 2, gen)
        for i in range(2):
            counts[i, rows[i]] += 1
    assert counts[0, 6:].sum() == 0  # structure 0 has only 6 rows
    freq0 = counts[0, :6] / (2 * draws)
    freq1 = counts[1] / (2 * draws)
    assert torch.allclose(freq0, torch.full((6,), 1 / 6), atol=0.02)
    assert torch.allclose(freq1, torch.full((12,), 1 / 12), atol=0.015)


def test_sample_batch_rows_errors():
    with pytest.raises(ValueError, match="structure 1: 7 Hessian rows asked per structure, 6 available"):
        sample_batch_rows(torch.tensor([3, 2]), 7)  # structure 1 has only 6 rows
    sample_batch_rows(torch.tensor([3, 2]), 6)  # exactly 3N is allowed
    with pytest.raises(ValueError, match="at least one"):
        sample_batch_rows(torch.tensor([3]), 0)


def test_sample_rows_draws_only_from_the_available_rows():
    available = torch.tensor([4, 9, 17, 30])  # e.g. the k rows a row-subset store holds
    drawn = {int(r) for k in range(50) for r in sample_rows(available, 2, torch.Generator().manual_seed(k))}
    assert drawn == set(available.tolist())
    with pytest.raises(ValueError, match=r"store\[3\]: 5 Hessian rows asked per structure, 4 available"):
        sample_rows(available, 5, where="store[3]")


def test_one_seed_rule_for_training_and_evaluation_rows():
    # evaluation (no epoch): the same rows every call, 10 000·(1 + split seed) + structure
    assert torch.equal(torch.randperm(9, generator=rows_generator(3, seed=2)),
                       torch.randperm(9, generator=torch.Generator().manual_seed(30_003)))
    # training: fresh rows per epoch, reproducible from (run seed, epoch, structure)
    epoch0 = [torch.randperm(30, generator=rows_generator(3, seed=0, epoch=0)) for _ in range(2)]
    epoch1 = torch.randperm(30, generator=rows_generator(3, seed=0, epoch=1))
    assert torch.equal(*epoch0) and not torch.equal(epoch0[0], epoch1)


def test_row_lanes_one_hot_layout():
    ptr = torch.tensor([0, 2, 5, 6])
    rows = torch.tensor([[1, -1, 5], [4, 0, 8], [2, 1, -1]])
    lanes = row_lanes(rows, ptr, dtype=torch.float64)
    assert lanes.shape == (3, 6, 3) and lanes.dtype == torch.float64
    expected = torch.zeros(3, 6, 3, dtype=torch.float64)
    for i in range(3):
        for k in range(3):
            r = int(rows[i, k])
            if r >= 0:
                expected[k, int(ptr[i]) + r // 3, r % 3] = 1.0
    assert torch.equal(lanes, expected)
    # one entry per structure that has a row in that lane
    assert lanes.sum(dim=(1, 2)).tolist() == (rows >= 0).sum(0).double().tolist()


def test_resolve_strategy():
    assert resolve_strategy("auto", torch.device("cpu")) == "loop"
    assert resolve_strategy("vmap", torch.device("cpu")) == "vmap"
    with pytest.raises(ValueError, match="unknown row strategy"):
        resolve_strategy("scan", torch.device("cpu"))


# ---- student rows vs finite differences and full Jacobians -------------------------------------------------
@pytest.mark.parametrize("force_mode", FORCE_MODES)
def test_force_jacobian_rows_match_finite_differences(force_mode):
    model = tiny_painn(force_mode)
    batch, out = student_outputs(model, two_molecules())
    rows = sample_batch_rows(batch.natoms, 4, torch.Generator().manual_seed(3))
    got = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="loop")
    assert got.shape == (4, batch.pos.shape[0], 3)

    # PaiNN's 1/d radial basis has large third derivatives: δ = 1e-5 Å keeps the O(δ²) error near 1e-8
    j_fd = finite_difference_force_jacobian(batch_force_fn(model, batch), batch.pos, delta=1e-5)
    ptr = batch.ptr.tolist()
    # structures are independent: the batch Jacobian is block-diagonal
    assert j_fd[3 * ptr[0] : 3 * ptr[1], 3 * ptr[1] :].abs().max() < 1e-10
    flat = flat_rows(rows, batch.ptr)
    expected_rows = torch.stack([j_fd[flat[:, k]].sum(0) for k in range(4)])  # one row per structure per lane
    torch.testing.assert_close(got.reshape(4, -1), expected_rows, atol=1e-7, rtol=1e-6)
    assert expected_rows.abs().max() > 1e-2  # the comparison is not between zeros

    asym = (j_fd - j_fd.T).abs().max()
    if force_mode == "conservative":
        assert asym < 1e-7  # J = −H is symmetric
    else:
        # a direct-force Jacobian is not symmetric, so rows and columns differ and the check above
        # would catch a VJP that returned columns instead of rows
        assert asym > 1e-3
        expected_cols = torch.stack([j_fd[:, flat[:, k]].sum(1) for k in range(4)])
        assert (got.reshape(4, -1) - expected_cols).abs().max() > 1e-4


@pytest.mark.parametrize("force_mode", FORCE_MODES)
def test_force_jacobian_rows_match_autograd_jacobian(force_mode):
    model = tiny_painn(force_mode)
    batch, out = student_outputs(model, two_molecules())
    force_fn = differentiable_student_forces(model, batch)
    torch.testing.assert_close(force_fn(batch.pos).detach(), out["forces"].detach(), atol=1e-12, rtol=0)

    n = batch.pos.shape[0]
    jac = torch.autograd.functional.jacobian(force_fn, batch.pos.clone()).reshape(3 * n, 3 * n)
    rows = torch.stack([torch.arange(9), torch.arange(9) + 2])  # structure 0 all 9 rows, structure 1 rows 2..10
    got = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="loop")
    flat = flat_rows(rows, batch.ptr)
    expected = torch.stack([jac[flat[:, k]].sum(0) for k in range(rows.shape[1])])
    torch.testing.assert_close(got.reshape(rows.shape[1], -1), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("force_mode", FORCE_MODES)
def test_loop_and_vmap_strategies_agree(force_mode):
    model = tiny_painn(force_mode)
    batch, out = student_outputs(model, two_molecules())
    rows = torch.tensor([[0, 5, 8], [11, -1, 3]])  # includes an empty slot (-1)
    loop = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="loop")
    vmap = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="vmap")
    torch.testing.assert_close(vmap, loop, atol=1e-12, rtol=1e-10)
    assert loop.abs().max() > 1e-3
    # the empty slot of structure 1 in lane 1 leaves its atoms at zero
    a, b = batch.ptr[1:].tolist()
    assert loop[1, a:b].abs().max() == 0


# ---- batched teacher Hessians ------------------------------------------------------------------------------
def teacher_forces(teacher, batch):
    batch = teacher._prepare(batch)
    energy = teacher.energy(batch)
    (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=True)
    return -grad, batch.pos


def test_batched_hessians_equal_one_at_a_time_and_finite_differences(ani_teacher):
    atoms_list = [rattled("H2O", seed=4), rattled("CH4", seed=5), rattled("NH3", seed=6)]
    batch = make_batch(atoms_list)
    forces, pos = teacher_forces(ani_teacher, batch)
    hessians = batched_hessians(forces, pos, batch.ptr, strategy="loop")
    chunked = batched_hessians(forces, pos, batch.ptr, chunk_size=4, strategy="vmap")
    assert [tuple(h.shape) for h in hessians] == [(9, 9), (15, 15), (12, 12)]
    for atoms, h, hc in zip(atoms_list, hessians, chunked):
        single = make_batch([atoms])
        f1, p1 = teacher_forces(ani_teacher, single)
        (alone,) = batched_hessians(f1, p1, single.ptr, strategy="loop")
        torch.testing.assert_close(h, alone, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(hc, alone, atol=1e-10, rtol=1e-10)
        assert (h - h.T).abs().max() < 1e-8
        assert h.abs().max() > 1.0  # a real molecular Hessian (eV/Å²), not zeros

        def force_fn(p):
            b = single.clone()
            b.pos = p
            energy = ani_teacher.energy(b)
            (grad,) = torch.autograd.grad(energy.sum(), p, create_graph=True)
            return -grad

        # exact: the autograd Jacobian of the teacher's force function
        n = len(atoms)
        jac = torch.autograd.functional.jacobian(force_fn, single.pos.detach().clone()).reshape(3 * n, 3 * n)
        torch.testing.assert_close(h, -jac, atol=1e-9, rtol=1e-9)

        # finite differences: ANI's CELU(α=0.1) activations have a second derivative that jumps by 1/α where a
        # pre-activation crosses 0, so the ANI Hessian is only piecewise continuous and central differences
        # (δ = 1e-4 Å) agree to ~1 % (relative Frobenius norm) rather than to O(δ²); a sign, scale or layout
        # error would be O(100 %). The exact check above is the tight one.
        fd = finite_difference_force_jacobian(lambda p: force_fn(p.requires_grad_(True)).detach(), single.pos,
                                              delta=1e-4)
        assert (h + fd).norm() / h.norm() < 3e-2


def test_teacher_lane_rows_equal_minus_jacobian_rows(ani_teacher):
    """Full Hessians cut into the lane layout give exactly −∂F_j/∂r from force_jacobian_rows."""
    batch = make_batch(two_molecules())
    forces, pos = teacher_forces(ani_teacher, batch)
    hessians = batched_hessians(forces, pos, batch.ptr)
    rows = sample_batch_rows(batch.natoms, 3, torch.Generator().manual_seed(0))
    lanes = teacher_lane_rows(hessians, rows)
    got = force_jacobian_rows(forces, pos, rows, batch.ptr, create_graph=False)
    torch.testing.assert_close(lanes, -got, atol=1e-12, rtol=0)


# ---- gradient of the KD loss w.r.t. model parameters -------------------------------------------------------
def kd_loss(model, batch, rows, teacher_rows, strategy="loop", norm="squared"):
    out = model(batch.clone(), create_graph=True)
    student_rows = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=True,
                                       strategy=strategy)
    return losses.hessian_kd_loss(student_rows, teacher_rows, batch.batch, batch.num_graphs, norm)


@pytest.mark.parametrize("force_mode", FORCE_MODES)
@pytest.mark.parametrize("norm", ["squared", "l2_per_atom"])
def test_kd_loss_parameter_gradient_matches_finite_differences(force_mode, norm, ani_teacher):
    model = tiny_painn(force_mode)
    batch = make_batch(two_molecules())
    model.ensure_graph(batch)
    forces, pos = teacher_forces(ani_teacher, batch)
    hessians = batched_hessians(forces, pos, batch.ptr)
    rows = sample_batch_rows(batch.natoms, 2, torch.Generator().manual_seed(11))
    teacher_rows = teacher_lane_rows(hessians, rows)

    params = {
        "first-layer filter": (model.representation.layers[0].filter.weight, (3, 2)),
        "second-layer update": (model.representation.layers[1].update[0].weight, (5, 7)),
    }
    model.zero_grad()
    kd_loss(model, batch, rows, teacher_rows, norm=norm).backward()
    eps = 1e-4  # the squared loss is ~1e4 (eV/Å²)²: smaller steps hit round-off
    for name, (param, index) in params.items():
        analytic = param.grad[index].item()
        with torch.no_grad():
            original = param[index].item()
            param[index] = original + eps
        plus = kd_loss(model, batch, rows, teacher_rows, norm=norm).item()
        with torch.no_grad():
            param[index] = original - eps
        minus = kd_loss(model, batch, rows, teacher_rows, norm=norm).item()
        with torch.no_grad():
            param[index] = original
        numeric = (plus - minus) / (2 * eps)
        assert abs(numeric) > 1e-6, f"{name}: parameter has no effect, the check would be vacuous"
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("force_mode", FORCE_MODES)
def test_kd_loss_parameter_gradients_loop_vs_vmap(force_mode):
    model = tiny_painn(force_mode)
    batch = make_batch(two_molecules())
    model.ensure_graph(batch)
    rows = sample_batch_rows(batch.natoms, 3, torch.Generator().manual_seed(5))
    teacher_rows = torch.randn(3, batch.pos.shape[0], 3, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(1))
    grads = {}
    for strategy in ("loop", "vmap"):
        model.zero_grad()
        kd_loss(model, batch, rows, teacher_rows, strategy=strategy).backward()
        grads[strategy] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["vmap"], grads["loop"], atol=1e-10, rtol=1e-8)
    assert grads["loop"].abs().max() > 1e-4


# ---- GPU -----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("force_mode", FORCE_MODES)
def test_vmap_rows_on_cuda_match_cpu_loop(force_mode):
    model = tiny_painn(force_mode)
    atoms_list = two_molecules()
    rows = sample_batch_rows(torch.tensor([len(a) for a in atoms_list]), 4, torch.Generator().manual_seed(2))
    batch, out = student_outputs(model, atoms_list)
    cpu = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="loop")

    model_cuda = model.to("cuda")
    batch_cuda = model.ensure_graph(make_batch(atoms_list)).to("cuda")  # graph built on the CPU
    out_cuda = model_cuda(batch_cuda, create_graph=True)
    assert resolve_strategy("auto", out_cuda["pos"].device) == "vmap"
    from hessdistill.hessian.rows import VMAP_FALLBACKS

    before = VMAP_FALLBACKS["count"]
    gpu = force_jacobian_rows(out_cuda["forces"], out_cuda["pos"], rows.to("cuda"), batch_cuda.ptr,
                              create_graph=False, strategy="vmap")
    assert VMAP_FALLBACKS["count"] == before  # the vectorised path was really taken
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-9, rtol=1e-7)


class _NumpyBackwardSquare(torch.autograd.Function):
    """x² whose backward goes through numpy: fine in a loop, impossible under vmap."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.from_numpy(2.0 * x.detach().numpy() * grad.detach().numpy())


def test_vmap_falls_back_to_loop_visibly(caplog):
    from hessdistill.hessian import rows as hess

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = _NumpyBackwardSquare.apply(x)
    lanes = torch.eye(12, dtype=torch.float64).view(12, 4, 3)
    before = hess.VMAP_FALLBACKS["count"]
    with caplog.at_level("WARNING", logger="hessdistill.hessian"):
        got = hess.vjp_lanes(y, x, lanes, create_graph=False, strategy="vmap")
    assert hess.VMAP_FALLBACKS["count"] == before + 1
    assert "loop instead" in caplog.text
    torch.testing.assert_close(got.view(12, 12), torch.diag(2 * x.detach().reshape(-1)))
