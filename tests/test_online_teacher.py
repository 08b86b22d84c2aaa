"""Online teacher mode: the same rows computed during training give the same loss as precomputed ones."""

from __future__ import annotations

import lightning as L
import torch
from torch_geometric.data import Batch

from hessdistill.data.datamodule import StoreDataModule
from hessdistill.training.module import DistillModule

STUDENT = {"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2, "num_rbf": 8,
           "cutoff": 4.0}
WEIGHTS = {"energy": 1.0, "forces": 10.0, "hessian": 2.0, "energy_grad": 1.0, "force_kd": 3.0}


def test_online_rows_equal_precomputed_rows_and_loss(labelled_store, ani_teacher):
    kw = dict(rows=3, split=(0.5, 0.5, 0.0), cutoff=4.0, dtype="float64")
    stored = StoreDataModule(str(labelled_store), teacher="ani1x", **kw)
    online = StoreDataModule(str(labelled_store), teacher=None, online=True, **kw)
    # validation items use fixed per-structure rows, so both modes see the same rows
    items_s = [stored.dataset("val")[k] for k in range(4)]
    items_o = [online.dataset("val")[k] for k in range(4)]
    assert all(torch.equal(a.hess_row, b.hess_row) for a, b in zip(items_s, items_o))
    assert not any(hasattr(b, "hess_rows") or hasattr(b, "teacher_forces") for b in items_o)

    L.seed_everything(0)
    module_s = DistillModule(STUDENT, weights=WEIGHTS).double()
    module_o = DistillModule(STUDENT, weights=WEIGHTS, teacher=ani_teacher).double()
    module_o.student.load_state_dict(module_s.student.state_dict())
    loss_s = module_s.training_step(Batch.from_data_list(items_s), 0)
    batch_o = Batch.from_data_list(items_o)
    loss_o = module_o.training_step(batch_o, 0)
    torch.testing.assert_close(batch_o.hess_rows, Batch.from_data_list(items_s).hess_rows, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss_o, loss_s, rtol=1e-6, atol=1e-6)
    # the teacher stays frozen and outside the optimiser and the checkpoint
    assert all(not p.requires_grad for p in ani_teacher.parameters())
    assert not any(k.startswith("teacher") for k in module_o.state_dict())
    (opt,) = [module_o.configure_optimizers()["optimizer"]]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in module_o.student.parameters())


def test_cli_online_mode_needs_no_precomputed_labels(tmp_path, monkeypatch, ani_teacher):
    """``teacher_mode=online`` trains from a store that holds only structures and reference labels."""
    import json

    from hydra import compose, initialize_config_dir

    from conftest import label_with, rattled
    from hessdistill.cli.config_path import CONFIG_DIR
    from hessdistill.cli.train import run
    from hessdistill.data.store import HessianStore, write_structures

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "plain.h5"
    write_structures(store, label_with(ani_teacher, [rattled(n, seed=k) for k, n in
                                                     enumerate(["H2O", "NH3", "CH4", "CH3OH"] * 2)]))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "teacher_mode=online", f"subset.store={store}",
                                          "trainer.max_epochs=1", "subset.rows=2", "subset.split=[0.5,0.25,0.25]",
                                          "student=painn_small", "student.hidden_channels=16", "student.num_layers=1",
                                          f"logger.0.save_dir={tmp_path / 'logs'}"])
    result = run(cfg, str(tmp_path / "run"))
    assert HessianStore(store).teachers() == []  # nothing was precomputed or written to the store
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert test == result["test"]
    assert test["test/hessian_mae"] > 0 and test["test/teacher_force_mae"] < 1e-3  # labels are the teacher's own
