"""Teacher node features (n2n baseline) and element embeddings (a2a) — what they are and that they are stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.units import Hartree

from conftest import label_with, make_batch, rattled
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.teacher_step.run import precompute_teacher


def test_ani_node_features_are_the_last_hidden_layer():
    """With one ensemble member, each atom's output layer applied to its feature gives its atomic energy."""
    from hessdistill.teachers.ani import ANITeacher

    teacher = ANITeacher(ensemble_size=1)
    batch = make_batch([rattled("CH3OH", seed=1), rattled("NH3", seed=2)])
    feats = teacher.node_features(batch)
    assert feats.shape == (batch.num_nodes, 96)
    nets = list(teacher.networks[0].values())
    order = {z: k for k, z in enumerate([1, 6, 7, 8])}
    atomic = torch.stack([nets[order[int(z)]][-1](f) for z, f in zip(batch.z, feats)]).squeeze(-1)
    sae = torch.tensor([teacher.shifter.self_energies[order[int(z)]] for z in batch.z], dtype=atomic.dtype)
    energy = torch.zeros(batch.num_graphs, dtype=atomic.dtype).index_add(0, batch.batch, atomic + sae) * Hartree
    torch.testing.assert_close(energy, teacher.energy_forces(batch)[0].detach(), rtol=0, atol=1e-8)


def test_mace_features_permute_with_atoms_and_embeddings_are_per_element():
    from conftest import tiny_mace
    from hessdistill.teachers.mace import MACETeacher

    teacher = MACETeacher(tiny_mace(), name="tiny")
    atoms = rattled("CH3OH", seed=5)
    perm = np.random.default_rng(0).permutation(len(atoms))
    f = teacher.node_features(make_batch([atoms]))
    f_perm = teacher.node_features(make_batch([atoms[perm]]))
    torch.testing.assert_close(f_perm, f[perm])
    assert f.shape == (len(atoms), 8)  # the last layer's 8x0e, not the earlier layers' 8x0e+8x1o
    turned = atoms.copy()
    turned.rotate(73, (0.3, -1.0, 0.5), center="COM")
    # invariant (to ~1e-7: e3nn keeps some constants in float32); the l > 0 parts would change by O(1)
    torch.testing.assert_close(teacher.node_features(make_batch([turned])), f, atol=1e-7, rtol=1e-5)
    z, emb = teacher.element_embeddings()
    assert emb.shape[0] == len(z) and len(set(map(tuple, emb.tolist()))) == len(z)  # one distinct row per element


def test_precompute_stores_features_and_embeddings(tmp_path, ani_teacher):
    from conftest import tiny_mace
    from hessdistill.teachers.mace import MACETeacher

    path = tmp_path / "f.h5"
    atoms = [rattled(n, seed=k) for k, n in enumerate(["H2O", "NH3", "CH4", "CH3OH"])]
    write_structures(path, label_with(ani_teacher, atoms))
    teacher = MACETeacher(tiny_mace(), name="tiny")
    with HessianStore(path, mode="a") as store:
        precompute_teacher(store, teacher, batch_size=3, features=True, progress=False)
        for i, a in enumerate(atoms):
            expected = teacher.node_features(make_batch([a])).numpy()
            np.testing.assert_allclose(store.node_features("tiny", i), expected, rtol=1e-5, atol=1e-6)
        group = store.teacher_group("tiny")
        z, emb = teacher.element_embeddings()
        np.testing.assert_array_equal(group["element_z"][:], z.numpy())
        np.testing.assert_allclose(group["element_embeddings"][:], emb.numpy(), rtol=1e-6)
        # ANI has separate per-element networks: node features only, and a clear message for a2a
        precompute_teacher(store, ani_teacher, features=True, progress=False)
        assert (store.node_features("ani1x", 0).shape == (3, 96)
                and "element_embeddings" not in store.teacher_group("ani1x"))
        with pytest.raises(NotImplementedError, match="no element embedding table"):
            ani_teacher.element_embeddings()


def test_features_cannot_be_added_to_a_half_labelled_group(tmp_path, ani_teacher):
    path = tmp_path / "g.h5"
    write_structures(path, label_with(ani_teacher, [rattled("H2O"), rattled("NH3")]))
    with HessianStore(path, mode="a") as store:
        precompute_teacher(store, ani_teacher, indices=np.array([0]), progress=False)
        with pytest.raises(StoreError, match="without node features"):
            precompute_teacher(store, ani_teacher, features=True, progress=False)
