"""A student trained on H/C/N/O given CH3Cl and SiH4: every path that evaluates it — the ASE calculator
(``hd.load_calculator``), ``hd.predict``, ``hd.evaluate``, the torch-sim adapter, batched MD and the deployed file —
refuses in one line naming the element and the checkpoint, and computes with the explicit opt-in. Checkpoints written
before students recorded their training elements get them from their reference energies, and still resume."""

from __future__ import annotations

import logging
import re

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

import hessdistill as hd
from conftest import compose_config, rattled
from hessdistill.evaluation.checkpoint import load_student
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.integrations.deploy import DeployedModel
from hessdistill.models.elements import UnseenElementError

TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]
NO_SECTIONS = {"speed.enabled": False, "md.enabled": False, "relax.enabled": False, "spectra.enabled": False}
HCNO = [1, 6, 7, 8]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, labelled_store):
    """A tiny PaiNN trained for one epoch on H2O, NH3, CH4 and CH3OH (H/C/N/O), deployed into its run directory:
    (run directory, the overrides that rebuild its config)."""
    from hessdistill.cli.train import run

    out = tmp_path_factory.mktemp("hcno")
    common = ["experiment=demo", f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]",
              "subset.batch_size=4", f"logger.0.save_dir={out}", "test=false", *TINY]
    run(compose_config("train", [*common, "trainer.max_epochs=1"]), str(out / "run"))
    return out / "run", common


def refused(call, elements: str, source) -> str:
    """The one-line message of ``call``'s UnseenElementError, checked to name ``elements`` and ``source``."""
    with pytest.raises(UnseenElementError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and elements in message and str(source) in message, message
    assert "(H, C, N, O)" in message and "allow_unseen_elements=True" in message
    return message


def test_the_student_records_its_training_elements(trained):
    student = load_student(trained[0] / "checkpoints" / "last.ckpt")
    assert torch.nonzero(student.trained_elements).flatten().tolist() == HCNO


def test_the_calculator_refuses_unseen_elements_unless_allowed(trained):
    checkpoint = trained[0] / "checkpoints" / "last.ckpt"
    calc = hd.load_calculator(checkpoint, device="cpu")
    for name, element in (("CH3Cl", "Cl (Z=17)"), ("SiH4", "Si (Z=14)")):
        atoms = molecule(name)
        atoms.calc = calc
        message = refused(atoms.get_potential_energy, element, checkpoint)
        assert message.startswith(f"{atoms.get_chemical_formula()}: element {element} not among those the student "
                                  f"of {checkpoint} was trained on")
        with pytest.raises(UnseenElementError):
            calc.get_hessian(atoms)
    atoms = rattled("CH4")  # its own elements: computed as before
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())
    for allowed in (hd.load_calculator(checkpoint, device="cpu", allow_unseen_elements=True),
                    TorchCalculator(load_student(checkpoint), allow_unseen_elements=True)):
        atoms = molecule("CH3Cl")
        atoms.calc = allowed
        assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


def test_predict_refuses_a_file_with_unseen_elements_before_computing_anything(trained, tmp_path):
    checkpoint = trained[0] / "checkpoints" / "last.ckpt"
    source, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(source, [rattled("CH4"), molecule("SiH4"), molecule("CH3Cl")])
    refused(lambda: hd.predict(checkpoint=str(checkpoint), input=str(source), output=str(out), device="cpu"),
            "Si (Z=14)", f"{source}[frame 1]")
    assert not out.exists()
    done = hd.predict(checkpoint=str(checkpoint), input=str(source), output=str(out), device="cpu",
                      allow_unseen_elements=True)
    assert done["frames"] == 3 and np.isfinite(ase.io.read(out, index=2).get_potential_energy())


def test_evaluate_refuses_a_store_with_unseen_elements(trained, tmp_path):
    from hessdistill.data.store import write_structures
    from hessdistill.data.structures import Structure

    checkpoint = trained[0] / "checkpoints" / "last.ckpt"
    labeller = TorchCalculator(load_student(checkpoint), allow_unseen_elements=True)
    structures = []
    for k in range(6):
        atoms = rattled(["CH3Cl", "SiH4"][k % 2], seed=k)
        atoms.calc = labeller
        structure = Structure.from_atoms(atoms, source=f"made[{k}]")
        structure.energy, structure.forces = atoms.get_potential_energy(), atoms.get_forces()
        structures.append(structure)
    store = tmp_path / "clsi.h5"
    write_structures(store, structures)
    settings = dict(checkpoint=str(checkpoint), split="train", device="cpu", **{"subset.store": str(store)},
                    **NO_SECTIONS)
    refused(lambda: hd.evaluate(output_dir=tmp_path / "refused", **settings), "(Z=", store)
    report = hd.evaluate(output_dir=tmp_path / "allowed", allow_unseen_elements=True, **settings)
    assert report["accuracy"]["force_mae"] < 1e-2  # labelled by the student itself (float32 vs float64 sums)


def test_the_torchsim_adapter_and_batched_md_refuse_unseen_elements(trained):
    pytest.importorskip("torch_sim")
    from torch_sim.io import atoms_to_state

    from hessdistill.evaluation.batched_md import nvt_stability
    from hessdistill.integrations.torchsim import TorchSimModel

    checkpoint = trained[0] / "checkpoints" / "last.ckpt"
    student = load_student(checkpoint)
    state = atoms_to_state([rattled("CH4"), molecule("SiH4")], torch.device("cpu"), torch.float64)
    message = refused(lambda: TorchSimModel(student)(state), "Si (Z=14)", checkpoint)
    assert message.startswith("torch-sim system(s) [1]: ")
    assert torch.isfinite(TorchSimModel(student, allow_unseen_elements=True)(state)["energy"]).all()
    refused(lambda: nvt_stability(molecule("SiH4"), student, replicas=2, steps=2), "Si (Z=14)", checkpoint)
    allowed = load_student(checkpoint, allow_unseen_elements=True)
    (run, _) = nvt_stability(molecule("SiH4"), allowed, replicas=2, steps=2, record_every=1)
    assert run["simulated_ps"] > 0


def test_the_deployed_file_refuses_unseen_elements(trained):
    deployed = trained[0] / "deployed.pt"
    model = DeployedModel(deployed)
    assert model.species == HCNO
    atoms = molecule("CH3Cl")
    atoms.calc = TorchCalculator(model)
    refused(atoms.get_potential_energy, "Cl (Z=17)", deployed)
    atoms.calc = TorchCalculator(DeployedModel(deployed, allow_unseen_elements=True))
    assert np.isfinite(atoms.get_potential_energy())
    atoms.calc = hd.deployed_calculator(str(deployed))  # metatomic's own calculator: refused by the engine
    with pytest.raises(Exception, match="17"):
        atoms.get_potential_energy()


def test_a_checkpoint_from_before_the_record_derives_its_elements_and_resumes(trained, tmp_path, caplog):
    from hessdistill.cli.train import run

    run_dir, common = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        if key in checkpoint:
            del checkpoint[key]["student.trained_elements"]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(checkpoint, legacy)
    with caplog.at_level(logging.WARNING):
        student = load_student(legacy)
    assert re.search(r"legacy.ckpt predates students recording their training elements: taking them from its "
                     r"non-zero reference energies \(H, C, N, O\)", caplog.text)
    assert torch.nonzero(student.trained_elements).flatten().tolist() == HCNO
    refused(lambda: TorchCalculator(student).get_potential_energy(molecule("CH3Cl")), "Cl (Z=17)", legacy)
    resumed = run(compose_config("train", [*common, "trainer.max_epochs=2", f"ckpt_path={legacy}",
                                           "deploy.enabled=false"]), str(tmp_path / "resumed"))
    assert resumed["epochs"] == 2
    assert torch.nonzero(load_student(resumed["checkpoint"]).trained_elements).flatten().tolist() == HCNO
