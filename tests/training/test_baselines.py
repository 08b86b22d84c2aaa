"""The paper's n2n and a2a baselines: the node-feature loss, projected teacher element embeddings, and both
baselines trained through the Hydra command on a store with MACE node features and element embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import distill_terms, label_with, rattled
from hessdistill import losses
from hessdistill.config import CONFIG_DIR
from hessdistill.data.labels import StoredLabels
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.models.heads import ProjectedEmbedding
from hessdistill.teacher_step.run import precompute_teacher

pytest.importorskip("mace")


def test_node_feature_loss_is_the_mean_over_structures_of_per_atom_means():
    batch = torch.tensor([0, 0, 1])
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    # structure 0: (1 + 9) / 2 = 5; structure 1: 8 / 1 = 8 → mean 6.5
    assert losses.node_feature_loss(student, teacher, batch, 2).item() == pytest.approx(6.5)


def test_projected_embedding_is_a_learned_map_of_the_frozen_teacher_table():
    table = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    emb = ProjectedEmbedding(torch.tensor([1, 6, 8]), table, 4)
    out = emb(torch.tensor([6, 1, 6]))
    torch.testing.assert_close(out, table[[1, 0, 1]] @ emb.projection.weight.T)
    out.sum().backward()
    assert emb.projection.weight.grad.abs().sum() > 0
    assert [n for n, p in emb.named_parameters()] == ["projection.weight"]  # the teacher's table is not trained
    with pytest.raises(ValueError, match=r"no element embedding for atomic number\(s\) \[7\]"):
        emb(torch.tensor([1, 7]))


@pytest.fixture(scope="module")
def mace_feature_store(tmp_path_factory, ani_teacher):
    """12 molecules labelled by ANI-1x, with a tiny MACE teacher's Hessians, node features and element embeddings."""
    from conftest import tiny_mace
    from hessdistill.teachers.mace import MACETeacher

    path = tmp_path_factory.mktemp("baselines") / "mace.h5"
    atoms = [rattled(n, seed=k) for k, n in enumerate(["H2O", "NH3", "CH4", "CH3OH"] * 3)]
    write_structures(path, label_with(ani_teacher, atoms))
    with HessianStore(path, "a") as store:
        precompute_teacher(store, MACETeacher(tiny_mace(), name="mace"), batch_size=4, progress=False, features=True)
    return path


def train_cfg(store, distill, tmp_path, *extra):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["experiment=demo", "teacher=mace", f"distill={distill}",
                                           f"subset.store={store}", "trainer.max_epochs=2", "subset.batch_size=4",
                                           "subset.split=[0.5,0.25,0.25]",
                                           f"logger.0.save_dir={tmp_path / 'logs'}", "student.hidden_channels=16",
                                           "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0", *extra])


@pytest.mark.parametrize("distill", ["n2n", "a2a"])
def test_baselines_train_through_the_hydra_command(distill, mace_feature_store, tmp_path, monkeypatch):
    from hessdistill.cli.train import run
    from hessdistill.evaluation.checkpoint import load_student

    monkeypatch.chdir(tmp_path)
    cfg = train_cfg(mace_feature_store, distill, tmp_path)
    result = run(cfg, str(tmp_path / "run"))
    assert result["distill"] == distill and result["test"]["test/force_mae"] > 0
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    with HessianStore(mace_feature_store) as store:
        if distill == "n2n":
            projection = checkpoint["state_dict"]["loss.terms.n2n.projection.weight"]
            assert projection.shape == (store.node_feature_width("mace"), 16)
            assert checkpoint["hyper_parameters"]["terms"]["n2n"]["weight"] == 1e4
        else:  # the checkpoint alone rebuilds the projected embedding (the plugin recorded the teacher's table)
            z, table = store.element_embeddings("mace")
            emb = load_student(path).representation.embedding
            assert isinstance(emb, ProjectedEmbedding)
            torch.testing.assert_close(emb.teacher_table[torch.as_tensor(z)], torch.as_tensor(table))
            torch.testing.assert_close(emb.projection.weight,
                                       checkpoint["state_dict"]["student.representation.embedding.projection.weight"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["distill"] == distill


def test_n2n_term_falls_when_trained_alone(mace_feature_store):
    from hessdistill.data.datamodule import StoreDataModule
    from hessdistill.training.module import DistillModule

    with HessianStore(mace_feature_store) as store:
        width = store.node_feature_width("mace")
    dm = StoreDataModule(str(mace_feature_store), labels=StoredLabels("mace", node_features=True), rows=0,
                         batch_size=12, split=(1.0, 0.0, 0.0), cutoff=4.0)
    module = DistillModule({"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2,
                            "num_rbf": 8, "cutoff": 4.0}, {"n2n": distill_terms("n2n", n2n=1.0)["n2n"]},
                           optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2})
    module.prepare(dm)
    module.log = lambda *a, **k: None  # no Trainer attached
    batch = next(iter(dm.train_dataloader()))
    assert batch.teacher_node_features.shape == (batch.pos.shape[0], width)
    opt = module.configure_optimizers()["optimizer"]
    projection = module.loss.terms["n2n"].projection
    assert projection.weight.shape == (width, 16)
    assert any(p is projection.weight for g in opt.param_groups for p in g["params"])
    history = []
    for _ in range(40):
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.3 * history[0]


def test_a2a_refuses_a_student_without_an_embedding_table():
    from hessdistill.models.mace_student import MACEStudent

    student = MACEStudent(atomic_numbers=[1, 8], hidden_channels=4, num_interactions=1, correlation=1)
    with pytest.raises(ValueError, match="a2a needs a student whose representation has an element embedding"):
        student.use_teacher_embeddings(torch.tensor([1, 8]), torch.ones(2, 3))


def test_baselines_refuse_stores_without_features(labelled_store, tmp_path):
    from hessdistill.cli.train import run

    with pytest.raises(StoreError, match="no node features; precompute with features=true"):
        run(train_cfg(labelled_store, "n2n", tmp_path, "teacher=ani1x"), str(tmp_path / "a"))
    with pytest.raises(StoreError, match="no element embeddings"):
        run(train_cfg(labelled_store, "a2a", tmp_path, "teacher=ani1x"), str(tmp_path / "b"))
