"""Importance-sampled Hessian rows: the weighted KD loss is unbiased (its mean over draws is the uniform loss), the
floor keeps every row drawable, the residual buffer learns from training and survives checkpoints; uniform rows are
today's sampler."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from conftest import distill_terms
from hessdistill.data.datamodule import StoreDataModule, StoreDataset
from hessdistill.data.labels import StoredLabels
from hessdistill.data.store import HessianStore
from hessdistill.hessian.row_sampling import ResidualRows, TeacherNormRows, UniformRows, make_row_sampler
from hessdistill.hessian.rows import force_jacobian_rows, rows_generator, sample_rows
from hessdistill.losses import hessian_kd_loss
from hessdistill.training.callbacks import RowResidualFeedback
from hessdistill.training.module import DistillModule
from hessdistill.training.terms import LossTerm

STRUCTURE = 13  # a CH3OH of the tiny store: 18 rows


@pytest.fixture(scope="module")
def residual_rows(labelled_store):
    """Teacher rows H (18, 18), a random student's Jacobian rows J (18, 18) and its residual rows of one structure."""
    from conftest import make_batch, tiny_painn

    with HessianStore(labelled_store) as store:
        hessian = torch.as_tensor(store.hessian("ani1x", STRUCTURE), dtype=torch.float64)
        batch = make_batch([store.structure(STRUCTURE).to_atoms()])
    student = tiny_painn("conservative")
    out = student(batch, create_graph=True)
    jacobian = force_jacobian_rows(out["forces"], out["pos"], torch.arange(18)[None], batch.ptr, create_graph=False)
    return hessian, jacobian.detach().reshape(18, 18)


def kd_loss(hessian, jacobian, rows, weights, norm="squared"):
    """hessian_kd_loss of one structure's rows (s,) with importance weights (s,) or None."""
    lanes = (hessian[rows].view(len(rows), -1, 3), jacobian[rows].view(len(rows), -1, 3))
    batch = torch.zeros(6, dtype=torch.long)
    return float(hessian_kd_loss(lanes[1], lanes[0], batch, 1, norm, None if weights is None else weights[None]))


def uniform_expectation(hessian, jacobian, norm="squared"):
    """The uniform loss's expectation: the mean over all 18 rows of one row's term."""
    return np.mean([kd_loss(hessian, jacobian, torch.tensor([j]), None, norm) for j in range(18)])


@pytest.mark.parametrize("norm", ["squared", "l2_per_atom"])
@pytest.mark.parametrize("kind", ["teacher_norm", "residual"])
def test_importance_sampled_kd_loss_is_unbiased(residual_rows, kind, norm):
    hessian, jacobian = residual_rows
    available = torch.arange(18)
    if kind == "teacher_norm":
        sampler = TeacherNormRows(floor=0.2)
    else:  # the residual norms fed back from training, of rows 0-11 only (rows 12-17 not seen yet)
        sampler = ResidualRows(floor=0.2, widths=np.array([18]))
        seen = torch.arange(12)
        sampler.update(torch.tensor([0]), seen[None], (hessian + jacobian)[seen].norm(dim=1)[None])
    exact = uniform_expectation(hessian, jacobian, norm)
    weighted, unweighted = [], []
    generator = torch.Generator().manual_seed(0)
    for _ in range(4000):
        rows, weights = sampler.draw(0, available, 2, generator, "test", lambda: hessian.norm(dim=1))
        assert weights.max() <= 1 / 0.2 + 1e-9  # the floor bounds the weights
        weighted.append(kd_loss(hessian, jacobian, rows, weights, norm))
        unweighted.append(kd_loss(hessian, jacobian, rows, None, norm))
    weighted, unweighted = np.array(weighted), np.array(unweighted)
    standard_error = weighted.std() / np.sqrt(len(weighted))
    assert abs(weighted.mean() - exact) < 4 * standard_error, (weighted.mean(), exact, standard_error)
    # the same draws without their weights are biased, so the check above can fail
    assert abs(unweighted.mean() - exact) > 4 * unweighted.std() / np.sqrt(len(unweighted))


def test_importance_probabilities_follow_the_scores_with_a_floor():
    sampler = ResidualRows(floor=0.2, widths=np.array([4, 6]))
    available = torch.arange(6)
    draw = lambda: sampler.draw(1, available, 4000, torch.Generator().manual_seed(0), "x", None)  # noqa: E731
    rows, weights = draw()  # nothing seen: uniform, weight 1
    assert torch.allclose(weights, torch.ones(4000, dtype=weights.dtype))
    sampler.update(torch.tensor([1]), torch.tensor([[0, 1]]), torch.tensor([[9.0, 1.0]]))  # rows 2-5 unseen: 9
    rows, weights = draw()
    scores = np.array([9.0, 1.0, 9.0, 9.0, 9.0, 9.0])
    p = 0.8 * scores / scores.sum() + 0.2 / 6
    frequency = np.bincount(rows.numpy(), minlength=6) / 4000
    assert np.abs(frequency - p).max() < 4 * np.sqrt(p.max() / 4000)
    np.testing.assert_allclose(weights.numpy(), 1 / (6 * p[rows.numpy()]))
    assert sampler.buffer[:4].isnan().all()  # structure 0's rows are untouched
    with pytest.raises(ValueError, match=r"row_floor must be in \(0, 1\]"):
        ResidualRows(floor=0.0, widths=np.array([3]))


def test_uniform_rows_are_todays_sampler(labelled_store):
    assert make_row_sampler("uniform", 0.2, lambda: None).draw(
        3, torch.arange(12), 4, rows_generator(3, 0, 1), "x", None)[0].tolist() == \
        sample_rows(torch.arange(12), 4, rows_generator(3, 0, 1)).tolist()
    with pytest.raises(ValueError, match="unknown row_sampling 'nope'"):
        make_row_sampler("nope", 0.2, lambda: None)
    item = StoreDataset(HessianStore(labelled_store), np.arange(4), StoredLabels("ani1x"), rows=2, cutoff=4.0)[1]
    assert not hasattr(item, "row_weights")  # uniform rows carry no weights: the loss is unchanged


def test_items_carry_row_weights_that_the_kd_term_applies(labelled_store):
    sampler = TeacherNormRows(floor=0.3)
    dataset = StoreDataset(HessianStore(labelled_store), np.array([STRUCTURE]), StoredLabels("ani1x"), rows=3,
                           cutoff=4.0, dtype=torch.float64, sampler=sampler)
    item = dataset[(0, 5)]
    rows = item.sampled_rows[0]
    norms = torch.as_tensor(dataset.store.hessian("ani1x", STRUCTURE), dtype=torch.float64).norm(dim=1)
    p = 0.7 * norms / norms.sum() + 0.3 / 18
    torch.testing.assert_close(item.row_weights[0], 1 / (18 * p[rows]))
    term = LossTerm("hessian_kd_loss", "force_jacobian_rows", "teacher_rows", rows=3)
    value = term({"force_jacobian_rows": torch.zeros_like(item.teacher_rows)}, Batch.from_data_list([item]))
    expected = (item.row_weights[0] * (item.teacher_rows**2).sum((1, 2))).mean()
    assert float(value) == pytest.approx(float(expected))


def test_residual_rows_learn_in_training_and_survive_checkpoints(labelled_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)

    def data():
        return StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=2, batch_size=4,
                               split=(0.5, 0.5, 0.0), cutoff=4.0, row_sampling="residual")

    dm = data()
    module = DistillModule({"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 8, "num_layers": 1,
                            "num_rbf": 4, "cutoff": 4.0}, distill_terms(hessian=1.0))
    module.prepare(dm)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, accelerator="cpu",
                        inference_mode=False, callbacks=[RowResidualFeedback()], enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    sampler = dm.row_sampler
    seen = ~sampler.buffer.isnan()
    train = dm.splits["train"]
    for i in range(len(dm.store)):  # every training structure has its 2 drawn rows recorded, nothing else
        count = int(seen[sampler.offsets[i] : sampler.offsets[i + 1]].sum())
        assert (count in (1, 2)) if i in train else count == 0
    assert (sampler.buffer[seen] > 0).all()
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    restored = data()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=False)["StoreDataModule"])
    assert torch.equal(restored.row_sampler.buffer.nan_to_num(-1), sampler.buffer.nan_to_num(-1))
    bigger = ResidualRows(0.2, np.array([*(3 * dm.store.n_atoms()), 9]))  # a run whose training set has grown
    bigger.load_state_dict(sampler.state_dict())
    assert torch.equal(bigger.buffer[: len(sampler.buffer)].nan_to_num(-1), sampler.buffer.nan_to_num(-1))
    with pytest.raises(ValueError, match="saved for other data"):
        ResidualRows(0.2, np.array([3])).load_state_dict(sampler.state_dict())
    assert UniformRows().state_dict() == {}
