"""The worst-rows sampler (``row_sampling=worst_rows``): the rows of the atoms with the largest current force error,
greedily and without weights, with a random share that keeps every row drawable; its per-atom force errors are fed
from training steps (``training.feedback.ForceErrorFeedback``) and survive checkpoints."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from conftest import distill_terms
from hessdistill.data.datamodule import StoreDataModule, StoreDataset
from hessdistill.data.labels import StoredLabels
from hessdistill.hessian.row_sampling import ROW_SAMPLINGS, WorstRows, make_row_sampler
from hessdistill.training.feedback import ForceErrorFeedback
from hessdistill.training.module import DistillModule

ERRORS = torch.tensor([0.1, 0.9, 0.3, 2.0, 0.2, 0.5])  # eV/Å of a 6-atom structure: atom 3 worst, then atom 1


def sampler_with_errors(floor: float) -> WorstRows:
    sampler = WorstRows(floor, np.array([9, 18]))  # structure 0: 3 atoms, structure 1: 6 atoms
    sampler.update_force_errors(torch.tensor([1]), ERRORS, torch.zeros(6, dtype=torch.long), torch.tensor([0, 6]))
    return sampler


def draws(sampler, key: int, available: torch.Tensor, s: int, n: int = 2000) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        rows, weights = sampler.draw(key, available, s, generator, "x", None)
        assert weights is None  # greedy and biased on purpose: no importance weights
        assert len(set(rows.tolist())) == s  # distinct rows
        out.append(sorted(rows.tolist()))
    return out


def test_greedy_rows_are_the_worst_atoms_rows():
    sampler = sampler_with_errors(floor=1e-9)  # (practically) no random share
    seen = draws(sampler, 1, torch.arange(18), 4, n=300)
    for rows in seen:  # all of atom 3's rows, then one of atom 1's (its 3 rows tie: random)
        assert rows[:1] in ([3], [4], [5]) and rows[1:] == [9, 10, 11]
    assert {r[0] for r in seen} == {3, 4, 5}
    # a row-subset store: only the available rows, ranked by their atoms' errors
    assert draws(sampler, 1, torch.tensor([0, 2, 4, 7, 16]), 2, n=50)[0] == [4, 16]


def test_a_random_share_keeps_every_row_drawable():
    sampler = sampler_with_errors(floor=0.2)
    seen = draws(sampler, 1, torch.arange(18), 4)
    counts = np.bincount(np.concatenate(seen), minlength=18)
    assert (counts > 0).all()  # every row is drawn
    worst = np.mean([set(r) >= {9, 10, 11} for r in seen])
    # the worst atom's 3 rows all come in with at most 1 random slot of 4 (0.8⁴ + 4·0.2·0.8³ = 0.819), or when random
    # slots pick the missing ones (+0.020): 0.839; the least-error atom's rows come only through random slots
    assert abs(worst - 0.839) < 4 * np.sqrt(0.839 * 0.161 / len(seen))
    assert counts[0:3].sum() < 0.1 * counts[9:12].sum()
    uniform = draws(sampler, 0, torch.arange(9), 3)  # structure 0 not seen yet: uniform distinct rows
    frequency = np.bincount(np.concatenate(uniform), minlength=9) / len(uniform)
    assert np.abs(frequency - 3 / 9).max() < 4 * np.sqrt((1 / 3) * (2 / 3) / len(uniform))
    with pytest.raises(ValueError, match="structure x: 5 Hessian rows asked per structure, 4 available"):
        sampler.draw(0, torch.arange(4), 5, torch.Generator(), "structure x", None)
    with pytest.raises(ValueError, match=r"row_floor must be in \(0, 1\]"):
        WorstRows(0.0, np.array([3]))
    assert "worst_rows" in ROW_SAMPLINGS and isinstance(make_row_sampler("worst_rows", 0.2, lambda: [9]), WorstRows)


def test_feedback_records_each_atoms_force_error():
    sampler = WorstRows(0.2, np.array([9, 6, 12]))
    batch = SimpleNamespace(idx=torch.tensor([2, 0]), batch=torch.tensor([0, 0, 0, 0, 1, 1, 1]),
                            ptr=torch.tensor([0, 4, 7]), forces=torch.zeros(7, 3))
    forces = torch.arange(21, dtype=torch.float32).view(7, 3)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(row_sampler=sampler))
    ForceErrorFeedback().on_train_batch_end(trainer, SimpleNamespace(last_forces=forces), None, batch, 0)
    norms = forces.norm(dim=1)
    torch.testing.assert_close(sampler.buffer[5:9], norms[:4])  # structure 2's atoms follow 3 + 2 others
    torch.testing.assert_close(sampler.buffer[0:3], norms[4:])
    assert sampler.buffer[3:5].isnan().all()
    plain = SimpleNamespace(datamodule=SimpleNamespace(row_sampler=make_row_sampler("uniform", 0.2, None)))
    ForceErrorFeedback().on_train_batch_end(plain, SimpleNamespace(last_forces=forces), None, batch, 0)  # a no-op


def test_force_errors_learn_in_training_and_survive_checkpoints(labelled_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)

    def data():
        return StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=2, batch_size=4,
                               split=(0.5, 0.5, 0.0), cutoff=4.0, row_sampling="worst_rows")

    dm = data()
    module = DistillModule({"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 8, "num_layers": 1,
                            "num_rbf": 4, "cutoff": 4.0}, distill_terms(hessian=1.0))
    module.prepare(dm)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, accelerator="cpu",
                        inference_mode=False, callbacks=[ForceErrorFeedback()], enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    sampler, train = dm.row_sampler, dm.splits["train"]
    for i in range(len(dm.store)):  # every training structure's atoms are recorded, nothing else
        errors = sampler.buffer[sampler.offsets[i] : sampler.offsets[i + 1]]
        assert (~errors.isnan()).all() and (errors > 0).all() if i in train else errors.isnan().all()
    item = StoreDataset(dm.store, train[:1], dm.labels, 2, 4.0, sampler=sampler, first_id=0)[(0, 3)]
    worst = int(torch.argmax(sampler.buffer[sampler.offsets[train[0]] : sampler.offsets[train[0] + 1]]))
    assert not hasattr(item, "row_weights")
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    restored = data()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=False)["StoreDataModule"])
    assert torch.equal(restored.row_sampler.buffer.nan_to_num(-1), sampler.buffer.nan_to_num(-1))
    # the restored run draws the same rows: the worst atom's, unless a random slot took their place
    generator = torch.Generator().manual_seed(1)
    rows = [restored.row_sampler.draw(int(train[0]), torch.arange(3 * int(dm.store.n_atoms(int(train[0])))), 3,
                                      generator, "x", None)[0] // 3 for _ in range(200)]
    assert np.mean([bool((r == worst).all()) for r in rows]) > 0.42  # 0.8³ = 0.512 of draws have no random slot
    bigger = WorstRows(0.2, np.array([*(3 * dm.store.n_atoms()), 9]))  # a run whose training set has grown
    bigger.load_state_dict(sampler.state_dict())
    assert torch.equal(bigger.buffer[: len(sampler.buffer)].nan_to_num(-1), sampler.buffer.nan_to_num(-1))
    with pytest.raises(ValueError, match="force-error buffer covers .* atoms, .* saved for other data"):
        WorstRows(0.2, np.array([3])).load_state_dict(sampler.state_dict())
