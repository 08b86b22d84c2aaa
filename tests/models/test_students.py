"""Every student of the zoo, in both force modes, through the same checks: Hessian rows against the autograd
Jacobian and finite differences, KD-loss parameter gradients against finite differences (twice differentiable),
rotation/translation invariance of energy and equivariance of forces, and a run of the Hydra training command."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.spatial.transform import Rotation

from conftest import make_batch, rattled
from hessdistill import losses
from hessdistill.config import CONFIG_DIR
from hessdistill.hessian import student_rows
from hessdistill.hessian.finite_difference import finite_difference_force_jacobian
from hessdistill.hessian.rows import VMAP_FALLBACKS, force_jacobian_rows, sample_batch_rows
from hessdistill.training import predictions
from hessdistill.training.predictions import predict

FORCE_MODES = ("direct", "conservative")
TINY = {  # student config name → tiny hyper-parameters (same code paths as the defaults)
    "painn": {"hidden_channels": 16, "num_layers": 2, "num_rbf": 8, "cutoff": 4.0},
    "schnet": {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_rbf": 12, "cutoff": 4.0},
    "gemnet_dt": {"num_blocks": 2, "emb_size_atom": 16, "emb_size_edge": 16, "emb_size_trip": 8, "emb_size_rbf": 8,
                  "emb_size_cbf": 8, "emb_size_bil_trip": 8, "num_spherical": 4, "num_radial": 4, "cutoff": 4.0},
    "escn": {"channels": 8, "hidden_channels": 6, "num_layers": 2, "num_radial": 4, "cutoff": 4.0,
             "avg_num_neighbors": 4.0},
    "mace": {"hidden_channels": 8, "max_ell": 2, "num_interactions": 2, "correlation": 2, "num_bessel": 4,
             "radial_mlp": "[8,8]", "cutoff": 4.0},
}
STUDENTS = [(name, mode) for name in TINY for mode in FORCE_MODES]  # gemnet_dt + conservative = GemNet-T


def build(name: str, force_mode: str, seed: int = 0):
    import hydra

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"student={name}", f"student.force_mode={force_mode}",
                                          *[f"student.{k}={v}" for k, v in TINY[name].items()]]).student
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(cfg).double()
    # non-trivial energy statistics, so the scale and reference buffers are exercised too
    model.set_energy_statistics(torch.linspace(-10.0, -1.0, 119, dtype=torch.float64), 0.7)
    return model


def molecules():
    return [rattled("CH3OH", seed=1, stdev=0.1), rattled("H2O", seed=2, stdev=0.1)]


def graph_batch(model, atoms_list):
    batch = make_batch(atoms_list)
    model.ensure_graph(batch)
    return batch


def kd_loss(model, batch, rows, target, strategy):
    """The Hessian-KD term of a training step with the student's rows by ``strategy`` (differentiable w.r.t. the
    parameters, as in training)."""
    batch.sampled_rows = rows
    student = predict(model, batch, {"force_jacobian_rows"}, create_graph=True, strategy=strategy)
    return losses.hessian_kd_loss(student["force_jacobian_rows"], target, batch.batch, batch.num_graphs)


def force_fn(model, batch):
    def forces(pos):
        pos = pos if pos.requires_grad else pos.detach().requires_grad_(True)
        return model.outputs(pos, batch, create_graph=True)[1]
    return forces


@pytest.mark.parametrize("name, force_mode", STUDENTS)
def test_rows_match_autograd_jacobian_and_finite_differences(name, force_mode):
    model = build(name, force_mode)
    batch = graph_batch(model, molecules())
    out = model(batch, create_graph=True)
    rows = sample_batch_rows(batch.natoms, 4, torch.Generator().manual_seed(3))
    got = force_jacobian_rows(out["forces"], out["pos"], rows, batch.ptr, create_graph=False, strategy="vmap")
    n = batch.pos.shape[0]
    jac = torch.autograd.functional.jacobian(force_fn(model, batch), batch.pos.clone()).reshape(3 * n, 3 * n)
    fd = finite_difference_force_jacobian(lambda p: force_fn(model, batch)(p).detach(), batch.pos, delta=1e-5)
    flat = 3 * batch.ptr[:-1, None] + rows
    expected = torch.stack([jac[flat[:, k]].sum(0) for k in range(4)])
    scale = float(jac.abs().max())
    assert scale > 1e-4  # the comparisons are not between zeros
    torch.testing.assert_close(got.reshape(4, -1), expected, atol=1e-10 * scale, rtol=1e-8)
    torch.testing.assert_close(jac, fd, atol=1e-5 * scale, rtol=1e-5)
    asym = float((jac - jac.T).abs().max()) / scale
    assert asym < 1e-9 if force_mode == "conservative" else asym > 1e-3  # −H symmetric; a force head's is not


@pytest.mark.parametrize("strategy", ["loop", "jvp", "fd"])
@pytest.mark.parametrize("name, force_mode", STUDENTS)
def test_kd_loss_parameter_gradient_matches_finite_differences(name, force_mode, strategy, monkeypatch):
    # the gradient of the fd loss is exact for any step; at the float64 default (1e-7 Å) the loss carries round-off
    # ~1e-9 that a parameter difference quotient would amplify, so the check takes a coarse step
    monkeypatch.setitem(student_rows.FD_STEP, (torch.float64, "fd"), 1e-3)
    model = build(name, force_mode)
    batch = graph_batch(model, molecules())
    rows = sample_batch_rows(batch.natoms, 2, torch.Generator().manual_seed(5))
    target = torch.randn(2, batch.pos.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss():
        return kd_loss(model, batch, rows, target, strategy)

    params = [p for n, p in model.representation.named_parameters() if p.dim() == 2 and "embedding" not in n]
    checked = 0
    for param in (params[0], params[-1]):  # first and last layer of the representation
        model.zero_grad()
        loss().backward()
        index = tuple(min(1, d - 1) for d in param.shape)
        analytic = 0.0 if param.grad is None else param.grad[index].item()  # None: the loss does not use it
        eps, original = 1e-5, param[index].item()
        with torch.no_grad():
            param[index] = original + eps
        plus = loss().item()
        with torch.no_grad():
            param[index] = original - eps
        minus = loss().item()
        with torch.no_grad():
            param[index] = original
        numeric = (plus - minus) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        checked += abs(numeric) > 1e-7
    assert checked >= 1, "no checked parameter affects the loss: the test would be vacuous"


@pytest.mark.parametrize("name, force_mode", STUDENTS)
def test_kd_parameter_gradients_through_vmap_equal_the_loop(name, force_mode):
    """Training on a GPU takes the vmapped VJP with create_graph (auto = vmap on CUDA): same gradients."""
    model = build(name, force_mode)
    batch = graph_batch(model, molecules())
    rows = sample_batch_rows(batch.natoms, 3, torch.Generator().manual_seed(2))
    target = torch.randn(3, batch.pos.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads, fallbacks = {}, VMAP_FALLBACKS["count"]
    for strategy in ("loop", "vmap"):
        model.zero_grad()
        kd_loss(model, batch, rows, target, strategy).backward()
        grads[strategy] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["vmap"], grads["loop"], atol=1e-10, rtol=1e-8)
    assert grads["loop"].abs().max() > 0
    assert VMAP_FALLBACKS["count"] == fallbacks  # vmap really ran (no silent loop fallback)


# relative error of each training strategy's rows against the exact Jacobian columns, in float64: jvp is exact;
# fd (h = 1e-7 Å) and fd_central (h = 1e-6 Å) err by ≤ 3e-7 and ≤ 1e-9 in the step table of hessian.student_rows
COLUMN_TOLERANCE = {"jvp": 1e-9, "fd": 1e-5, "fd_central": 1e-7}


@pytest.mark.parametrize("name, force_mode", STUDENTS)
def test_training_row_strategies_give_the_jacobian_columns(name, force_mode):
    """jvp and finite differences displace coordinate j: they give column j of the force Jacobian, ∂F/∂r_j, which is
    the row for a conservative student (J = −H) and, for a direct one, what the authors match to the teacher's rows."""
    model = build(name, force_mode)
    batch = graph_batch(model, molecules())
    batch.sampled_rows = sample_batch_rows(batch.natoms, 3, torch.Generator().manual_seed(3))
    n = batch.pos.shape[0]
    jac = torch.autograd.functional.jacobian(force_fn(model, batch), batch.pos.clone()).reshape(3 * n, 3 * n)
    flat = 3 * batch.ptr[:-1, None] + batch.sampled_rows
    columns = torch.stack([jac[:, flat[:, k]].sum(1) for k in range(3)])  # structures' blocks are disjoint
    scale = float(columns.abs().max())
    assert scale > 1e-4
    rows = torch.stack([jac[flat[:, k]].sum(0) for k in range(3)])
    # forward mode is refused, counted, for a conservative student (the backward through its tangents hits a
    # forward-mode formula torch cannot differentiate again) and for mace-torch's direct student (its tangents fail
    # the adjoint test): those fall back to VJP rows
    falls_back = force_mode == "conservative" or name == "mace"
    fallbacks = predictions.JVP_FALLBACKS["count"]
    for strategy, tolerance in COLUMN_TOLERANCE.items():
        got = predict(model, batch, {"force_jacobian_rows"}, create_graph=True, strategy=strategy)
        expected = rows if strategy == "jvp" and falls_back else columns
        torch.testing.assert_close(got["force_jacobian_rows"].detach().reshape(3, -1), expected,
                                   atol=tolerance * scale, rtol=0, msg=strategy)
        plain = model(batch)
        torch.testing.assert_close(got["forces"].detach(), plain["forces"].detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(got["energy"].detach(), plain["energy"].detach(), atol=1e-10, rtol=0)
    assert predictions.JVP_FALLBACKS["count"] == fallbacks + falls_back


@pytest.mark.parametrize("name, force_mode", STUDENTS)
def test_energy_invariant_and_forces_equivariant(name, force_mode):
    model = build(name, force_mode)
    atoms_list = molecules()
    rotation = Rotation.from_euler("zyx", [0.3, -1.1, 2.0])
    moved = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.positions = rotation.apply(atoms.positions) + [1.5, -2.0, 0.7]
        moved.append(atoms)
    e0, f0 = model.energy_forces(graph_batch(model, atoms_list))
    e1, f1 = model.energy_forces(graph_batch(model, moved))
    torch.testing.assert_close(e1, e0, atol=1e-9, rtol=1e-12)
    r = torch.as_tensor(rotation.as_matrix(), dtype=torch.float64)
    scale = float(f0.abs().max())
    assert scale > 1e-5  # random weights give small but non-zero forces
    torch.testing.assert_close(f1, f0 @ r.T, atol=1e-7 * scale, rtol=1e-7)


@pytest.mark.parametrize("name", sorted([*TINY, "gemnet_t"]))
def test_every_student_trains_under_the_same_hydra_command(name, labelled_store, tmp_path, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    tiny = TINY.get(name, TINY["gemnet_dt"])  # gemnet_t: GemNet-dT's network with conservative forces
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", f"student={name}", f"subset.store={labelled_store}",
                                          "trainer.max_epochs=2", "subset.batch_size=8", "rows=1",
                                          "subset.split=[0.5,0.25,0.25]",
                                          f"logger.0.save_dir={tmp_path / 'logs'}",
                                          *[f"student.{k}={v}" for k, v in tiny.items()]])
    assert cfg.student.force_mode == ("conservative" if name in ("gemnet_t", "schnet", "mace") else "direct")
    result = run(cfg, str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == json.loads(json.dumps(result))
    assert result["epochs"] == 2 and result["test"]["test/force_mae"] > 0
    assert result["test"]["test/hessian_mae"] == result["test"]["test/hessian_mae"]  # evaluated, not NaN
