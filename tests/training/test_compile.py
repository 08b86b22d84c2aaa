"""compile=true: a torch.compiled student trains to the same loss and gradients as the eager one, and the runs it
cannot serve (double backward) are refused up front."""

from __future__ import annotations

import pytest
import torch

from conftest import distill_terms, make_batch, rattled, tiny_painn
from hessdistill import losses
from hessdistill.hessian.rows import sample_batch_rows
from hessdistill.training.module import DistillModule, compile_student
from hessdistill.training.predictions import predict

TINY = {"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2, "num_rbf": 8,
        "cutoff": 4.0}


def kd_step(model, batch, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A KD training step's loss and parameter gradient (flat)."""
    model.zero_grad()
    out = predict(model, batch, {"forces", "force_jacobian_rows"}, create_graph=True, strategy=strategy)
    target = torch.ones_like(out["force_jacobian_rows"])
    loss = (losses.force_loss(out["forces"], torch.zeros_like(out["forces"]), batch.batch, batch.num_graphs)
            + losses.hessian_kd_loss(out["force_jacobian_rows"], target, batch.batch, batch.num_graphs))
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_compiled_student_gives_the_eager_loss_and_gradients():
    eager, compiled = tiny_painn("direct"), tiny_painn("direct")  # same seed: same weights, float64
    assert compile_student(compiled, "auto") == "fd"
    for k, names in enumerate([("CH3OH", "H2O"), ("NH3", "CH4", "H2O")]):  # a second shape: dynamic, no failure
        batch = make_batch([rattled(n, seed=k) for n in names])
        eager.ensure_graph(batch)
        batch.sampled_rows = sample_batch_rows(batch.natoms, 2, torch.Generator().manual_seed(k))
        (loss_e, grad_e), (loss_c, grad_c) = kd_step(eager, batch, "fd"), kd_step(compiled, batch, "fd")
        # fd rows divide force differences by h = 1e-7 Å: fused kernels' round-off (~1e-16) grows to ~1e-9
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-7, atol=0)
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-5, atol=1e-8 * float(grad_e.abs().max()))
        rows_e = predict(eager, batch, {"force_jacobian_rows"}, create_graph=False)["force_jacobian_rows"]
        rows_c = predict(compiled, batch, {"force_jacobian_rows"}, create_graph=False)["force_jacobian_rows"]
        torch.testing.assert_close(rows_c, rows_e, rtol=1e-9, atol=1e-12)  # validation's exact rows still work


def test_compile_refuses_what_needs_a_double_backward():
    with pytest.raises(ValueError, match="compile=true needs a direct-force student"):
        DistillModule({**TINY, "force_mode": "conservative"}, distill_terms(), compile=True)
    with pytest.raises(ValueError, match="compile=true trains with finite-difference rows .* not 'loop'"):
        DistillModule({**TINY, "force_mode": "direct"}, distill_terms(energy_grad=0.0), row_strategy="loop",
                      compile=True)
    with pytest.raises(ValueError, match="compile=true cannot train the energy-gradient term .* weights.energy_grad=0"):
        DistillModule({**TINY, "force_mode": "direct"}, distill_terms(energy_grad=1.0), compile=True)
    module = DistillModule({**TINY, "force_mode": "direct"}, distill_terms(energy_grad=0.0), compile=True)
    assert module.row_strategy == "fd"
