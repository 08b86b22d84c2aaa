"""CHGNet materials teacher (weights in the chgnet wheel): periodic forces and Hessians by autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import distill_terms, make_batch, shared_file
from hessdistill.hessian.finite_difference import finite_difference_force_jacobian
from hessdistill.hessian.rows import VMAP_FALLBACKS

pytest.importorskip("chgnet")


@pytest.fixture(scope="module")
def chgnet():
    from hessdistill.teachers.chgnet import CHGNetTeacher

    return CHGNetTeacher()


def forces_at(teacher, atoms, pos: torch.Tensor) -> torch.Tensor:
    batch = make_batch([atoms], torch.float32)
    batch.pos = pos.to(torch.float32)
    return teacher.energy_forces(batch)[1].double()


def test_forces_match_chgnet_calculator_and_hessian_matches_finite_differences(chgnet):
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    atoms.rattle(0.03, seed=3)
    batch = make_batch([atoms, bulk("Si", "diamond", a=5.43)], torch.float32)
    fallbacks = VMAP_FALLBACKS["count"]  # a process-wide counter: other tests may have raised it already
    out = chgnet.hessians(batch, strategy="vmap")
    energy, forces, hessians = out.energy, out.forces, out.hessians
    assert VMAP_FALLBACKS["count"] == fallbacks  # CHGNet's Hessians really went through vmap
    reference = atoms.copy()
    reference.calc = CHGNetCalculator(model=chgnet.model, use_device="cpu")
    np.testing.assert_allclose(forces[:8].numpy(), reference.get_forces(), atol=1e-4)
    assert float(energy[0]) == pytest.approx(reference.get_potential_energy(), abs=1e-3)
    h = hessians[0].double()
    fd = -finite_difference_force_jacobian(lambda p: forces_at(chgnet, atoms, p), torch.tensor(atoms.positions), 1e-3)
    # float32 model: central differences of float32 forces carry ~1e-3 eV/Å² noise; index or sign errors give O(1)
    assert float((h - fd).norm() / h.norm()) < 5e-3
    assert float((h - h.T).abs().max()) < 1e-4 * float(h.abs().max())


def test_molecules_are_refused(chgnet):
    from ase.build import molecule

    with pytest.raises(ValueError, match="periodic"):
        chgnet.energy_forces(make_batch([molecule("H2O")], torch.float32))


def test_gesbte_hessian_rows_match_finite_differences(chgnet):
    """Real 81-atom Ge2Sb2Te5 DFT cell: sampled Hessian rows (k lanes, not 243) against FD columns (H symmetric)."""
    import ase.io

    atoms = ase.io.read(shared_file("data/gesbte_dft_200.xyz"), index=0)
    batch = make_batch([atoms], torch.float32)
    rows = torch.tensor([[0, 100, 242]])
    lanes = chgnet.hessian_rows(batch, rows).rows
    pos = torch.tensor(atoms.positions)
    for k, j in enumerate(rows[0].tolist()):
        step = torch.zeros_like(pos).view(-1)
        step[j] = 1e-3
        col = -(forces_at(chgnet, atoms, pos + step.view_as(pos))
                - forces_at(chgnet, atoms, pos - step.view_as(pos))) / 2e-3
        row = lanes[k].double().reshape(-1)
        # float32 CHGNet on 81 atoms: FD is only good to ~1.5 % at its best step (measured relative errors of these
        # rows: δ 1e-4: 18–25 % round-off, 3e-4: 4–6 %, 1e-3: 1.3–1.8 %, 3e-3: 1.2–3.8 %); a wrong row is O(1)
        assert float((row - col.reshape(-1)).norm() / row.norm()) < 3e-2


def test_periodic_students_train_on_chgnet_hessians(tmp_path, chgnet):
    """Materials end to end: CHGNet labels and Hessians in a store, periodic radius graph, a KD step, and a
    student energy that does not change when atoms are wrapped back into the cell."""
    import lightning as L

    from hessdistill.data.datamodule import StoreDataModule
    from hessdistill.data.labels import StoredLabels
    from hessdistill.data.store import HessianStore, write_structures
    from hessdistill.data.structures import Structure
    from hessdistill.teacher_step.run import precompute_teacher
    from hessdistill.training.module import DistillModule

    cells = []
    for k in range(4):
        atoms = bulk("NaCl", "rocksalt", a=5.6, cubic=True) if k % 2 else bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.rattle(0.05, seed=k)
        s = Structure.from_atoms(atoms, source=f"cell[{k}]")
        e, f = chgnet.energy_forces(make_batch([atoms], torch.float32))
        s.energy, s.forces = float(e[0]), f.detach().double().numpy()
        cells.append(s)
    path = tmp_path / "materials.h5"
    write_structures(path, cells)
    with HessianStore(path, mode="a") as store:
        precompute_teacher(store, chgnet, batch_size=2, progress=False)
        assert store.hessian("chgnet", 1).shape == (24, 24)
    L.seed_everything(0)
    dm = StoreDataModule(str(path), labels=StoredLabels("chgnet"), rows=2, batch_size=4, split=(1.0, 0.0, 0.0),
                         cutoff=4.0)
    batch = next(iter(dm.train_dataloader()))
    assert batch.edge_shift.abs().sum() > 0  # edges cross the cell boundary
    module = DistillModule({"_target_": "hessdistill.models.painn.PaiNN", "hidden_channels": 16, "num_layers": 2,
                            "num_rbf": 8, "cutoff": 4.0}, distill_terms(energy=1.0, forces=10.0, hessian=1.0))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in module.student.parameters()
                                        if p.grad is not None)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=9)
    shifted = atoms.copy()
    shifted.positions += np.array([1.3, -0.7, 2.9])
    e0 = module.student.energy_forces(make_batch([atoms], torch.float32))[0]
    shifted.wrap()
    e1 = module.student.energy_forces(make_batch([shifted], torch.float32))[0]
    torch.testing.assert_close(e0, e1, rtol=0, atol=1e-4)
