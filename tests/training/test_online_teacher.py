"""Online teacher mode: the same rows computed during training give the same loss as precomputed ones."""

from __future__ import annotations

import lightning as L
import torch
from torch_geometric.data import Batch

from conftest import distill_terms
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.labels import OnlineLabels, StoredLabels
from hessdistill.training.module import DistillModule

STUDENT = {"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2, "num_rbf": 8,
           "cutoff": 4.0}


def test_online_rows_equal_precomputed_rows_and_loss(labelled_store, ani_teacher):
    kw = dict(rows=3, split=(0.5, 0.5, 0.0), cutoff=4.0, dtype="float64")
    stored = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), **kw)
    online = StoreDataModule(str(labelled_store), labels=OnlineLabels(ani_teacher), **kw)
    # validation items use fixed per-structure rows, so both modes see the same rows
    items_s = [stored.dataset("val")[k] for k in range(4)]
    items_o = [online.dataset("val")[k] for k in range(4)]
    assert all(torch.equal(a.sampled_rows, b.sampled_rows) for a, b in zip(items_s, items_o))
    assert not any(hasattr(b, "teacher_rows") or hasattr(b, "teacher_forces") for b in items_o)
    batch_s = stored.on_after_batch_transfer(Batch.from_data_list(items_s), 0)  # stored labels pass through
    batch_o = online.on_after_batch_transfer(Batch.from_data_list(items_o), 0)  # the teacher labels the batch
    torch.testing.assert_close(batch_o.teacher_rows, batch_s.teacher_rows, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(batch_o.teacher_forces, batch_s.teacher_forces, rtol=0, atol=1e-10)

    terms = {**distill_terms("hessian", rows=3, energy=1.0, forces=10.0, hessian=2.0, energy_grad=1.0),
             "force_kd": {**distill_terms("force_kd")["force_kd"], "weight": 3.0}}
    L.seed_everything(0)
    module_s = DistillModule(STUDENT, terms).double()
    module_o = DistillModule(STUDENT, terms).double()
    module_o.student.load_state_dict(module_s.student.state_dict())
    torch.testing.assert_close(module_o.training_step(batch_o, 0), module_s.training_step(batch_s, 0),
                               rtol=1e-6, atol=1e-6)
    # the teacher stays frozen and belongs to the data side: not in the module, its optimiser or checkpoint
    assert all(not p.requires_grad for p in ani_teacher.parameters())
    assert not any(k.startswith("teacher") for k in module_o.state_dict())


def test_cli_online_mode_needs_no_precomputed_labels(tmp_path, monkeypatch, ani_teacher):
    """``teacher_mode=online`` trains from a store that holds only structures and reference labels."""
    import json

    from hydra import compose, initialize_config_dir

    from conftest import label_with, rattled
    from hessdistill.cli.train import run
    from hessdistill.config import CONFIG_DIR
    from hessdistill.data.store import HessianStore, write_structures

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "plain.h5"
    write_structures(store, label_with(ani_teacher, [rattled(n, seed=k) for k, n in
                                                     enumerate(["H2O", "NH3", "CH4", "CH3OH"] * 2)]))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "teacher_mode=online", f"subset.store={store}",
                                          "trainer.max_epochs=1", "rows=2", "subset.split=[0.5,0.25,0.25]",
                                          "student=painn_small", "student.hidden_channels=16", "student.num_layers=1",
                                          f"logger.0.save_dir={tmp_path / 'logs'}"])
    result = run(cfg, str(tmp_path / "run"))
    assert HessianStore(store).teachers() == []  # nothing was precomputed or written to the store
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert test == result["test"]
    assert test["test/hessian_mae"] > 0 and test["test/teacher_force_mae"] < 1e-3  # labels are the teacher's own
