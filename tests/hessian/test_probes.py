"""Hessian-vector-product KD (``hessian.probes``, ``losses.hessian_hvp_loss``): the student's J v by every strategy
equals the dense Jacobian times v and the finite difference of forces along v, for direct and conservative students;
the probe loss is unbiased for the rows term's expectation; the datamodule puts seeded probes and the teacher's H v
on the batch, and refuses what cannot give H v."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from conftest import make_batch, rattled, tiny_painn
from hessdistill.data.datamodule import StoreDataModule, StoreDataset
from hessdistill.data.labels import OnlineLabels, StoredLabels
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.hessian.probes import (
    draw_probes,
    hessian_vector_products,
    jacobian_vector_products,
    probe_generator,
)
from hessdistill.hessian.rows import force_jacobian_rows, rows_generator
from hessdistill.losses import hessian_hvp_loss, hessian_kd_loss
from hessdistill.training.predictions import predict

STRUCTURE = 13  # a CH3OH of the tiny store: 18 rows


def probed_batch(model, k: int = 3, distribution: str = "rademacher"):
    """Three molecules of different sizes with k probes each, as lanes (k, Ntot, 3)."""
    batch = make_batch([rattled("CH3OH", 1, 0.1), rattled("H2O", 2, 0.1), rattled("NH3", 3, 0.1)])
    model.ensure_graph(batch)
    generator = torch.Generator().manual_seed(5)
    batch.probe_vectors = torch.cat([draw_probes(int(n), k, distribution, generator) for n in batch.natoms], dim=1)
    return batch


def dense_jacobians(model, batch) -> list[torch.Tensor]:
    """Each structure's full force Jacobian J = ∂F/∂r (3N, 3N) by autograd, one structure at a time."""
    out = []
    for a, b in zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist()):
        pos = batch.pos.detach().clone()

        def forces_of(block: torch.Tensor, a=a, b=b, pos=pos) -> torch.Tensor:
            full = torch.cat([pos[:a], block, pos[b:]])
            return model.outputs(full, batch, create_graph=True)[1][a:b]

        jac = torch.autograd.functional.jacobian(forces_of, pos[a:b])  # (N, 3, N, 3)
        out.append(jac.reshape(3 * (b - a), 3 * (b - a)))
    return out


def dense_products(jacobians: list[torch.Tensor], batch, transpose: bool = False) -> torch.Tensor:
    """J v (or Jᵀ v) of each structure's probes, as lanes (k, Ntot, 3)."""
    lanes = []
    for jac, a, b in zip(jacobians, batch.ptr[:-1].tolist(), batch.ptr[1:].tolist()):
        v = batch.probe_vectors[:, a:b].reshape(batch.probe_vectors.shape[0], -1)
        lanes.append((v @ (jac if transpose else jac.T)).view(v.shape[0], b - a, 3))
    return torch.cat(lanes, dim=1)


@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
def test_student_products_are_the_dense_jacobian_times_v(force_mode):
    model = tiny_painn(force_mode)
    batch = probed_batch(model)
    jacobians = dense_jacobians(model, batch)
    dense = dense_products(jacobians, batch)
    if force_mode == "direct":  # J is not symmetric: Jᵀ v is another product, so the checks below can fail
        assert float((dense_products(jacobians, batch, transpose=True) - dense).abs().max()) > 1e-2
    else:
        torch.testing.assert_close(dense_products(jacobians, batch, transpose=True), dense, atol=1e-10, rtol=0)
    out = model(batch, create_graph=True)
    for strategy in ("loop", "vmap"):
        got = jacobian_vector_products(out["forces"], out["pos"], batch.probe_vectors, False, strategy,
                                       force_mode == "conservative")
        torch.testing.assert_close(got, dense, atol=1e-10, rtol=0)
    for strategy, tolerance in (("loop", 1e-10), ("vmap", 1e-10), ("jvp", 1e-10), ("fd_central", 1e-6),
                                ("fd", 1e-4)):  # training: differentiable products by the run's row strategy
        got = predict(model, batch, {"force_jacobian_probes"}, create_graph=True, strategy=strategy)
        assert got["force_jacobian_probes"].requires_grad
        error = (got["force_jacobian_probes"].detach() - dense).norm() / dense.norm()
        assert float(error) < tolerance, (strategy, float(error))
    evaluated = predict(model, batch, {"force_jacobian_probes"}, create_graph=False)["force_jacobian_probes"]
    torch.testing.assert_close(evaluated, dense, atol=1e-10, rtol=0)


@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
def test_student_products_equal_finite_differences_of_forces_along_v(force_mode):
    """(F(r + h v) − F(r − h v)) / 2h → J v, independent of autograd's Jacobian."""
    model = tiny_painn(force_mode)
    batch = probed_batch(model, k=2, distribution="gaussian")
    out = model(batch, create_graph=True)
    got = jacobian_vector_products(out["forces"], out["pos"], batch.probe_vectors, False, "loop",
                                   force_mode == "conservative")
    h = 1e-5
    for m in range(2):
        shifted = [model.outputs((batch.pos + sign * h * batch.probe_vectors[m]).requires_grad_(True), batch)[1]
                   for sign in (1, -1)]
        central = (shifted[0] - shifted[1]).detach() / (2 * h)
        torch.testing.assert_close(got[m], central, atol=1e-6 * float(central.abs().max()), rtol=1e-6)


def test_products_back_propagate_to_the_parameters():
    """The training products carry the student's parameters: the KD gradient of a direct student by reverse mode
    (double VJP) equals forward mode's."""
    grads = {}
    for strategy in ("loop", "jvp"):
        model = tiny_painn("direct")
        batch = probed_batch(model, k=2)
        products = predict(model, batch, {"force_jacobian_probes"}, True, strategy)["force_jacobian_probes"]
        products.square().sum().backward()
        grads[strategy] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert float(grads["loop"].norm()) > 0
    torch.testing.assert_close(grads["loop"], grads["jvp"], atol=1e-9, rtol=1e-7)


def test_probe_draws():
    generator = torch.Generator().manual_seed(0)
    v = draw_probes(400, 50, "rademacher", generator)
    assert v.shape == (50, 400, 3) and set(v.unique().tolist()) == {-1.0, 1.0}
    g = draw_probes(400, 50, "gaussian", generator).reshape(-1)
    assert abs(float(g.mean())) < 0.02 and abs(float(g.var()) - 1) < 0.02
    # E[v vᵀ] = I: the outer products of many probes average to the identity
    flat = draw_probes(4, 20000, "gaussian", generator).reshape(20000, 12)
    torch.testing.assert_close(flat.T @ flat / 20000, torch.eye(12, dtype=flat.dtype), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="unknown probe distribution 'uniform'; choose one of"):
        draw_probes(3, 1, "uniform", generator)
    # seeded per (seed, epoch, structure): the same on a resume, fresh each epoch, apart from the rows' stream
    same = [draw_probes(5, 2, "rademacher", probe_generator(7, 0, 3)) for _ in range(2)]
    assert torch.equal(*same)
    assert not torch.equal(same[0], draw_probes(5, 2, "rademacher", probe_generator(7, 0, 4)))
    assert not torch.equal(same[0], draw_probes(5, 2, "rademacher", rows_generator(7, 0, 3)))


@pytest.fixture(scope="module")
def residual_matrices(labelled_store):
    """Teacher Hessians and a random student's Jacobians of two structures of different sizes (18 and 9 rows)."""
    with HessianStore(labelled_store) as store:
        indices = [STRUCTURE, 1]  # CH3OH, H2O
        hessians = [torch.as_tensor(store.hessian("ani1x", i), dtype=torch.float64) for i in indices]
        batch = make_batch([store.structure(i).to_atoms() for i in indices])
    student = tiny_painn("direct")
    return hessians, dense_jacobians(student, student.ensure_graph(batch)), batch


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hvp_loss_is_unbiased_for_the_rows_term(residual_matrices, distribution):
    """Over probe draws, the mean HVP term is mean_i ‖H_i + J_i‖²_F / 3N_i: the expectation of the rows term over
    uniform rows (computed exactly, row by row), so equal λ_KD weighs the same objective."""
    hessians, jacobians, batch = residual_matrices
    residuals = [h + j for h, j in zip(hessians, jacobians)]
    exact = np.mean([float(r.square().sum()) / r.shape[0] for r in residuals])

    def row(matrices, j):  # row j (mod 3N_i) of each structure, as one lane (1, Ntot, 3)
        return torch.cat([m[j % m.shape[0]].view(1, -1, 3) for m in matrices], 1)

    rows_terms = [float(hessian_kd_loss(row(jacobians, j), row(hessians, j), batch.batch, 2))
                  for j in range(18)]  # 18 = lcm(18, 9): every row of both structures equally often
    assert np.mean(rows_terms) == pytest.approx(exact, rel=1e-10)
    generator = torch.Generator().manual_seed(1)
    values, unscaled = [], []
    for _ in range(3000):
        probes = [draw_probes(r.shape[0] // 3, 2, distribution, generator) for r in residuals]
        teacher = torch.cat([hessian_vector_products(h, v) for h, v in zip(hessians, probes)], 1)
        student = torch.cat([(v.reshape(2, -1) @ j.T).view(v.shape) for j, v in zip(jacobians, probes)], 1)
        values.append(float(hessian_hvp_loss(student, teacher, batch.batch, 2)))
        unscaled.append(float(((teacher + student) ** 2).sum() / 2 / 2))  # Σ over atoms, / k, / B: no 1/(3N_i)
    values = np.array(values)
    standard_error = values.std() / np.sqrt(len(values))
    assert abs(values.mean() - exact) < 4 * standard_error, (values.mean(), exact, standard_error)
    assert abs(np.mean(unscaled) - exact) > 20 * standard_error  # without the 1/(3N_i) the scale is another


def test_items_carry_seeded_probes_and_the_teachers_products(labelled_store):
    with HessianStore(labelled_store) as store:
        hessian = torch.as_tensor(store.hessian("ani1x", STRUCTURE), dtype=torch.float64)
    dataset = StoreDataset(HessianStore(labelled_store), np.array([STRUCTURE, 1]), StoredLabels("ani1x"), rows=2,
                           cutoff=4.0, dtype=torch.float64, rows_seed=3, probes=3)
    item = dataset[(0, 5)]
    assert item.probe_vectors.shape == item.teacher_hvp.shape == (3, 6, 3)
    torch.testing.assert_close(item.teacher_hvp.reshape(3, 18), item.probe_vectors.reshape(3, 18) @ hessian.T)
    assert torch.equal(dataset[(0, 5)].probe_vectors, item.probe_vectors)  # a resumed epoch draws the same
    assert not torch.equal(dataset[(0, 6)].probe_vectors, item.probe_vectors)  # the next epoch draws afresh
    expected = draw_probes(6, 3, "rademacher", probe_generator(STRUCTURE, 3, 5))
    assert torch.equal(item.probe_vectors, expected)
    assert item.sampled_rows.shape == (1, 2)  # rows are drawn as before, from their own stream
    batch = Batch.from_data_list([dataset[(0, 5)], dataset[(1, 5)]])
    assert batch.probe_vectors.shape == batch.teacher_hvp.shape == (3, 9, 3)  # lanes joined along the atoms
    torch.testing.assert_close(batch.teacher_hvp[:, :6], item.teacher_hvp)


def test_datamodule_gives_probes_to_training_only(labelled_store):
    dm = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=0, probes=2, batch_size=4,
                         split=(0.5, 0.5, 0.0), cutoff=4.0, probe_distribution="gaussian")
    train = next(iter(dm.train_dataloader()))
    assert train.probe_vectors.shape == (2, train.num_nodes, 3) and not hasattr(train, "sampled_rows")
    assert len(train.probe_vectors.unique()) > 2  # gaussian, not ±1
    val = next(iter(dm.val_dataloader()))
    assert not hasattr(val, "probe_vectors") and val.sampled_rows.shape[1] == 4  # validation scores rows
    with pytest.raises(ValueError, match="unknown probe_distribution 'sobol'"):
        StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), probes=2, split=(0.5, 0.5, 0.0),
                        probe_distribution="sobol")


def test_probes_are_refused_without_full_hessians(labelled_store, ani_teacher, tmp_path):
    from hessdistill.teacher_step.run import precompute_teacher

    with HessianStore(labelled_store) as store:
        structures = [store.structure(i) for i in range(4)]
    for layout in ("rows", "upper"):
        path = tmp_path / f"{layout}.h5"
        write_structures(path, structures)
        with HessianStore(path, mode="a") as store:
            precompute_teacher(store, ani_teacher, layout=layout, rows_per_structure=4 if layout == "rows" else None,
                               progress=False)
    with pytest.raises(ValueError, match=r"rows.h5: teacher ani1x stores k Hessian rows per structure \(layout "
                                         r"'rows'\); Hessian-vector-product KD needs full Hessians"):
        StoreDataModule(str(tmp_path / "rows.h5"), labels=StoredLabels("ani1x"), probes=2, split=(0.5, 0.5, 0.0))
    StoreDataModule(str(tmp_path / "rows.h5"), labels=StoredLabels("ani1x"), probes=0, split=(0.5, 0.5, 0.0))
    # the upper triangle gives the same products as the full layout
    upper = StoreDataset(HessianStore(tmp_path / "upper.h5"), np.arange(4), StoredLabels("ani1x"), 0, 4.0,
                         dtype=torch.float64, probes=2)[(2, 0)]
    full = StoreDataset(HessianStore(labelled_store), np.arange(4), StoredLabels("ani1x"), 0, 4.0,
                        dtype=torch.float64, probes=2)[(2, 0)]
    torch.testing.assert_close(upper.teacher_hvp, full.teacher_hvp, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the teacher's full Hessians from a store .* computes only rows"):
        StoreDataModule(str(labelled_store), labels=OnlineLabels(ani_teacher), probes=2, split=(0.5, 0.5, 0.0))


def test_rows_of_the_same_batch_are_unchanged_by_probes():
    """A batch with rows and probes: the rows are those the rows-only path computes."""
    model = tiny_painn("conservative")
    batch = probed_batch(model, k=2)
    batch.sampled_rows = torch.tensor([[0, 4], [1, 8], [2, 3]])
    both = predict(model, batch, {"force_jacobian_rows", "force_jacobian_probes"}, True, "loop")
    out = model(batch, create_graph=True)
    rows = force_jacobian_rows(out["forces"], out["pos"], batch.sampled_rows, batch.ptr, create_graph=False)
    torch.testing.assert_close(both["force_jacobian_rows"].detach(), rows, atol=1e-12, rtol=0)
    fd = predict(model, batch, {"force_jacobian_rows", "force_jacobian_probes"}, True, "fd_central")
    assert fd["force_jacobian_rows"].shape == (2, batch.num_nodes, 3)
    torch.testing.assert_close(fd["force_jacobian_probes"].detach(), both["force_jacobian_probes"].detach(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
@pytest.mark.parametrize("strategy", ["vmap", "jvp", "fd_central"])
def test_training_products_on_cuda_equal_cpu(force_mode, strategy):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = tiny_painn(force_mode)
    batch = probed_batch(model)
    cpu = predict(model, batch, {"force_jacobian_probes"}, create_graph=True, strategy=strategy)
    gpu = predict(model.cuda(), batch.cuda(), {"force_jacobian_probes"}, create_graph=True, strategy=strategy)
    torch.testing.assert_close(gpu["force_jacobian_probes"].detach().cpu(), cpu["force_jacobian_probes"].detach(),
                               atol=1e-8, rtol=1e-6)
