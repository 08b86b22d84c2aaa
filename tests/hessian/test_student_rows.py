"""Training-time student rows (``hessian.student_rows``, ``training.predictions``): the displaced copies' forward,
the finite-difference arithmetic, float32 steps, the strategy switch, and evaluation rows that ignore it."""

from __future__ import annotations

import pytest
import torch

from conftest import make_batch, rattled, tiny_painn
from hessdistill.hessian.finite_difference import finite_difference_lanes, lane_offsets, lane_steps
from hessdistill.hessian.rows import force_jacobian_rows, row_lanes, sample_batch_rows
from hessdistill.hessian.student_rows import resolve_student_strategy
from hessdistill.training.predictions import predict


def batch_of(model, dtype=torch.float64, rows: int = 2):
    batch = make_batch([rattled("CH3OH", 1, 0.1), rattled("H2O", 2, 0.1), rattled("NH3", 3, 0.1)], dtype)
    model.ensure_graph(batch)
    batch.sampled_rows = sample_batch_rows(batch.natoms, rows, torch.Generator().manual_seed(0))
    return batch


@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
def test_copies_in_one_forward_equal_separate_forwards(force_mode):
    model = tiny_painn(force_mode)
    batch = batch_of(model)
    moves = 0.05 * torch.randn(3, *batch.pos.shape, dtype=batch.pos.dtype, generator=torch.Generator().manual_seed(1))
    pos = batch.pos.detach().requires_grad_(True)
    energy, forces, scalars = model.outputs_at(pos + moves, batch, create_graph=False)
    for k in range(3):
        copy = batch.clone()
        copy.pos = batch.pos + moves[k]
        out = model(copy)
        torch.testing.assert_close(energy[k], out["energy"], atol=1e-10, rtol=0)
        torch.testing.assert_close(forces[k], out["forces"], atol=1e-10, rtol=0)
        torch.testing.assert_close(scalars[k], out["node_features"], atol=1e-10, rtol=0)


def test_offsets_are_exact_float32_steps_and_lanes_divide_by_them():
    """In float32 a nominal step is rounded at r ≈ 5 Å by up to 0.5 %: the lanes divide by the step really taken."""
    pos = torch.tensor([[5.123457, 0.0, -3.3], [1.0, 2.0, 3.0]], dtype=torch.float32)
    lanes = row_lanes(torch.tensor([[0, 5]]), torch.tensor([0, 2]), torch.float32)  # lane 0: x of atom 0, 1: z of 1
    moved = pos + lane_offsets(pos, lanes, 1e-4)  # (2 lanes, 2 atoms, 3)
    assert moved[0, 0, 0] == pos[0, 0] + torch.tensor(1e-4) and moved[1, 1, 2] == pos[1, 2] + torch.tensor(1e-4)
    assert int((moved != pos).sum()) == 2  # one coordinate per lane
    steps = lane_steps(moved - pos, torch.zeros(2, dtype=torch.long), 1)  # (2, 2, 1) float64
    taken = float(moved[0, 0, 0].double() - pos[0, 0].double())
    assert steps.dtype == torch.float64 and float(steps[0, 0, 0]) == taken and abs(taken / 1e-4 - 1) > 1e-3
    # a linear force field F = A r: lane k is exactly the column A e_j of its coordinate, whatever the rounding
    a = torch.arange(36, dtype=torch.float64).reshape(6, 6) / 7
    force = lambda r: (a @ r.double().reshape(-1)).reshape(2, 3)  # noqa: E731
    got = finite_difference_lanes(torch.stack([force(m) for m in moved]), steps, force(pos)[None])
    torch.testing.assert_close(got.reshape(2, 6), a.T[[0, 5]], atol=1e-9, rtol=0)


@pytest.mark.parametrize("strategy, tolerance", [("fd", 1e-2), ("fd_central", 2e-3), ("jvp", 1e-5)])
def test_float32_rows_at_the_default_steps(strategy, tolerance):
    """The float32 steps of FD_STEP keep finite-difference columns within the step table's errors."""
    model64 = tiny_painn("direct")
    exact = predict(model64, batch_of(model64), {"force_jacobian_rows"}, True, "jvp")["force_jacobian_rows"]
    model32 = tiny_painn("direct", torch.float32)
    got = predict(model32, batch_of(model32, torch.float32), {"force_jacobian_rows"}, True, strategy)
    error = (got["force_jacobian_rows"].double() - exact).norm() / exact.norm()
    assert float(error) < tolerance


def test_evaluation_rows_are_exact_vjp_rows_whatever_the_strategy():
    model = tiny_painn("direct")
    batch = batch_of(model)
    out = model(batch)
    exact = force_jacobian_rows(out["forces"], out["pos"], batch.sampled_rows, batch.ptr, create_graph=False)
    for strategy in ("fd", "jvp", "loop"):
        got = predict(model, batch, {"force_jacobian_rows"}, create_graph=False, strategy=strategy)
        torch.testing.assert_close(got["force_jacobian_rows"], exact, atol=1e-12, rtol=0)
    trained = predict(model, batch, {"force_jacobian_rows"}, create_graph=True, strategy="fd")
    assert float((trained["force_jacobian_rows"].detach() - exact).abs().max()) > 1e-3  # columns, not rows


def test_energy_gradient_of_the_batch_ignores_the_displaced_copies():
    model = tiny_painn("direct")
    batch = batch_of(model)
    wanted = {"energy_gradient_forces", "force_jacobian_rows"}
    fd = predict(model, batch, wanted, create_graph=True, strategy="fd")["energy_gradient_forces"]
    exact = predict(model, batch, wanted, create_graph=True, strategy="loop")["energy_gradient_forces"]
    torch.testing.assert_close(fd, exact, atol=1e-12, rtol=0)


def test_strategy_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for mode in ("direct", "conservative"):
        assert resolve_student_strategy("auto", cpu, mode) in ("loop", "vmap", "jvp", "fd", "fd_central")
        assert resolve_student_strategy("auto", cuda, mode) in ("loop", "vmap", "jvp", "fd", "fd_central")
        assert resolve_student_strategy("fd_central", cpu, mode) == "fd_central"
    with pytest.raises(ValueError, match="unknown row_strategy 'forward'; choose auto, loop, vmap, jvp, fd, "
                                         "fd_central"):
        resolve_student_strategy("forward", cpu, "direct")


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["fd", "fd_central", "jvp", "vmap"])
def test_training_rows_on_cuda_equal_cpu(strategy):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = tiny_painn("direct")
    batch = batch_of(model)
    cpu = predict(model, batch, {"force_jacobian_rows"}, create_graph=True, strategy=strategy)
    gpu = predict(model.cuda(), batch.cuda(), {"force_jacobian_rows"}, create_graph=True, strategy=strategy)
    torch.testing.assert_close(gpu["force_jacobian_rows"].detach().cpu(), cpu["force_jacobian_rows"].detach(),
                               atol=1e-8, rtol=1e-6)


def test_forward_mode_that_goes_wrong_after_its_first_pass_is_refused(monkeypatch):
    """mace-torch's direct student computes right tangents in its first dual forward and wrong ones after: the probe
    runs two passes and adjoint-tests every lane, so jvp falls back (counted) instead of training on wrong rows."""
    from hessdistill.hessian import forward_mode
    from hessdistill.training import predictions

    calls = {"n": 0}
    real = forward_mode.jvp_lanes

    def leaky(fn, pos, lanes, output):  # a model whose state leaks between dual forwards: later passes are wrong
        primal, tangents = real(fn, pos, lanes, output)
        calls["n"] += 1
        return primal, tangents if calls["n"] == 1 else 2 * tangents

    monkeypatch.setattr(predictions, "jvp_lanes", leaky)
    monkeypatch.setattr(predictions, "JVP_TRUSTED", {})
    model = tiny_painn("direct")
    batch = batch_of(model, rows=1)
    fallbacks = predictions.JVP_FALLBACKS["count"]
    got = predict(model, batch, {"force_jacobian_rows"}, create_graph=True, strategy="jvp")
    assert predictions.JVP_FALLBACKS["count"] == fallbacks + 1
    assert "adjoint test in 1 of 2 lanes" in next(iter(predictions.JVP_TRUSTED.values()))
    out = model(batch)
    exact = force_jacobian_rows(out["forces"], out["pos"], batch.sampled_rows, batch.ptr, create_graph=False)
    torch.testing.assert_close(got["force_jacobian_rows"].detach(), exact, atol=1e-12, rtol=0)  # VJP rows instead
