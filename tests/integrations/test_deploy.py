"""Deployed students (one metatomic file): every student of the zoo, in both force modes, gives the student's
energies and forces through metatomic's ASE calculator, this package's batched adapter and torch-sim, on molecules
and a periodic cell it was not traced on; the file runs without this package; NVE with a deployed conservative
student conserves energy as the student does."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from models.test_students import STUDENTS, build
from torch_sim.io import atoms_to_state

from conftest import make_batch, rattled, tiny_painn
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.integrations.deploy import DeployedModel, DeployError, deploy_student, import_metatomic
from hessdistill.integrations.torchsim import TorchSimModel


def metatomic_calculator(path, direct: bool):
    import_metatomic()
    from metatomic_ase import MetatomicCalculator

    # a direct-force student's forces come from its non_conservative_force output; stress stays −∂E/∂ε
    return MetatomicCalculator(str(path), non_conservative="forces" if direct else False, check_consistency=True)


def carbon_cell():
    """A rattled 8-atom diamond cell (5.43 Å): with a 4 Å cutoff every atom meets periodic images of itself."""
    cell = bulk("Si", "diamond", a=5.43, cubic=True)
    cell.numbers[:] = 6
    cell.rattle(0.05, seed=1)
    return cell


def untraced():
    """Structures of other sizes and species than the synthetic clusters a core is traced on."""
    return [rattled("C6H6", seed=4, stdev=0.1), rattled("CH3CONH2", seed=5, stdev=0.1), carbon_cell(),
            rattled("CO", seed=6)]  # a diatomic: GemNet has no triplets at all


@pytest.mark.parametrize("name, force_mode", STUDENTS)
def test_each_deployed_student_gives_the_students_energies_and_forces(name, force_mode, tmp_path):
    student = build(name, force_mode)
    path = deploy_student(student, tmp_path / "deployed.pt")
    structures = untraced()
    energy, forces = student.energy_forces(make_batch(structures))
    # this package's batched adapter: all structures in one call, energies summed in float64
    e_adapter, f_adapter = DeployedModel(path).energy_forces(make_batch(structures))
    scale = float(forces.abs().max())  # random tiny students: from ~1e-5 (MACE) to ~1 eV/Å
    assert scale > 1e-6
    torch.testing.assert_close(e_adapter, energy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f_adapter, forces, rtol=1e-9, atol=1e-9 * scale)
    # torch-sim through this package's adapter: molecules in one state, the periodic cell in another
    for chosen in ([0, 1, 3], [2]):
        state = atoms_to_state([structures[k] for k in chosen], torch.device("cpu"), torch.float64)
        out = TorchSimModel(DeployedModel(path))(state)
        rows = torch.cat([torch.arange(sum(map(len, structures[:k])), sum(map(len, structures[:k + 1])))
                          for k in chosen])
        torch.testing.assert_close(out["energy"], energy[chosen], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out["forces"], forces[rows], rtol=1e-9, atol=1e-9 * scale)
    # metatomic's ASE calculator, one structure at a time, with the engine's (vesin's) neighbour lists
    calc = metatomic_calculator(path, direct=force_mode == "direct")
    start = 0
    for k, atoms in enumerate(structures):
        atoms.calc = calc
        want = forces[start:start + len(atoms)].numpy()
        if force_mode == "direct":
            want = want - want.mean(axis=0)  # metatomic-ase removes the net force of non-conservative forces
        assert atoms.get_potential_energy() == pytest.approx(float(energy[k]), rel=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), want, rtol=1e-6, atol=1e-9 * scale)
        if atoms.pbc.all():  # stress (1/V) ∂E/∂ε of the file's energy, as the student's, in both force modes
            reference = TorchCalculator(student).get_property("stress", atoms.copy())
            np.testing.assert_allclose(atoms.get_stress(), reference, rtol=1e-6, atol=1e-9 * scale)
        start += len(atoms)


def test_the_file_carries_cutoff_species_units_and_runs_without_hessdistill(tmp_path):
    student = build("mace", "conservative")  # MACE knows SPICE's elements only
    path = deploy_student(student, tmp_path / "mace.pt")
    model = import_metatomic().load_atomistic_model(str(path))
    capabilities = model.capabilities()
    assert capabilities.interaction_range == student.cutoff == 4.0
    assert list(capabilities.atomic_types) == [1, 3, 6, 7, 8, 9, 11, 12, 15, 16, 17, 19, 20, 35, 53]
    assert capabilities.length_unit == "angstrom" and capabilities.outputs["energy"].unit == "eV"
    assert capabilities.dtype == "float64"
    atoms = rattled("CH3OH", seed=3)
    energy = float(student.energy_forces(make_batch([atoms]))[0][0])
    script = (
        "import sys; sys.modules['hessdistill'] = None\n"  # any import of this package would fail
        "from ase.build import molecule; from metatomic_ase import MetatomicCalculator\n"
        f"atoms = molecule('CH3OH'); atoms.rattle(stdev=0.05, seed=3)\n"
        f"atoms.calc = MetatomicCalculator({str(path)!r})\n"
        "print(repr(float(atoms.get_potential_energy())))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(energy, rel=1e-12)


def test_a_float32_student_deploys_in_float32_within_float32_round_off(tmp_path):
    student = tiny_painn("conservative", dtype=torch.float32)
    student.set_energy_statistics(torch.linspace(-5.0, -1.0, 119), 0.5)
    path = deploy_student(student, tmp_path / "f32.pt")
    batch = make_batch(untraced(), dtype=torch.float32)
    energy, forces = student.energy_forces(batch.clone())
    e_dep, f_dep = DeployedModel(path).energy_forces(batch.clone())
    # the same float32 operations on the same graph: agreement to float32 round-off (~1e-7 relative) of the
    # interaction energies; totals are float64 sums of float32 atom energies in both
    torch.testing.assert_close(e_dep, energy, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(f_dep, forces, rtol=1e-5, atol=1e-6)


def test_nve_with_the_deployed_student_conserves_energy_as_the_student_does(tmp_path):
    student = tiny_painn("conservative")
    student.set_energy_statistics(torch.linspace(-5.0, -1.0, 119, dtype=torch.float64), 0.5)
    path = deploy_student(student, tmp_path / "painn.pt")

    def nve(calc):
        atoms = rattled("CH3OH", seed=7, stdev=0.1)
        atoms.set_momenta(np.random.default_rng(0).normal(0.0, 0.5, (len(atoms), 3)))
        atoms.calc = calc
        energies = [atoms.get_total_energy()]
        dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
        for _ in range(20):
            dynamics.run(5)
            energies.append(atoms.get_total_energy())
        return np.array(energies), atoms.positions

    e_student, x_student = nve(TorchCalculator(student))
    e_deployed, x_deployed = nve(metatomic_calculator(path, direct=False))
    assert np.ptp(e_student) > 1e-8  # a real trajectory, not a resting molecule
    assert np.ptp(e_deployed) <= 1.01 * np.ptp(e_student) + 1e-9
    np.testing.assert_allclose(x_deployed, x_student, atol=1e-8)  # the same trajectory


def test_devices_it_cannot_trace_on_are_refused(tmp_path):
    with pytest.raises(DeployError, match=r"devices \['cpu', 'tpu'\]: unknown device type\(s\) \['tpu'\]; use cpu"):
        deploy_student(tiny_painn("direct"), tmp_path / "x.pt", devices=("cpu", "tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeployError, match=r"cuda needs a visible CUDA device to trace on; deploy there, or "
                                              r"devices=\[cpu\]"):
            deploy_student(tiny_painn("direct"), tmp_path / "x.pt", devices=("cpu", "cuda"))
    assert not (tmp_path / "x.pt").exists()


def test_a_student_whose_trace_would_bake_a_size_is_refused(tmp_path):
    class SizeBaking(torch.nn.Module):
        """A representation that turns the atom count into a Python int (a constant in a trace)."""

        hidden_channels, vector_features, edge_channels = 4, False, 4

        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(119, 4)

        def forward(self, z, vectors, edge_index):
            from hessdistill.models.base import AtomFeatures

            n = int(z.shape[0])
            s = self.embedding(z) + torch.arange(n, dtype=vectors.dtype)[:, None] / n
            return AtomFeatures(s, edges=vectors.new_zeros(vectors.shape[0], 4) + vectors.norm(dim=-1)[:, None])

    from hessdistill.models.base import ForceField

    student = ForceField(SizeBaking(), force_mode="conservative", cutoff=4.0).double()
    with pytest.raises(DeployError, match="SizeBaking: the traced student differs from the student on a graph of "
                                          "other sizes"):
        deploy_student(student, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_a_neighbour_cap_travels_with_the_file(tmp_path):
    from hessdistill.models.painn import PaiNN

    torch.manual_seed(0)
    student = PaiNN(16, 2, 8, cutoff=4.0, max_neighbors=3, force_mode="conservative").double()
    path = deploy_student(student, tmp_path / "capped.pt")
    batch = make_batch([rattled("C6H6", seed=4, stdev=0.1)])  # every atom has more than 3 neighbours
    uncapped = PaiNN(16, 2, 8, cutoff=4.0, force_mode="conservative").double()
    uncapped.load_state_dict(student.state_dict())
    energy, forces = student.energy_forces(batch.clone())
    assert abs(float(energy[0] - uncapped.energy_forces(batch.clone())[0][0])) > 1e-6  # the cap matters here
    e_dep, f_dep = DeployedModel(path).energy_forces(batch.clone())
    torch.testing.assert_close(e_dep, energy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f_dep, forces, rtol=1e-9, atol=1e-9)
    atoms = rattled("C6H6", seed=4, stdev=0.1)
    atoms.calc = metatomic_calculator(path, direct=False)
    np.testing.assert_allclose(atoms.get_forces(), forces.numpy(), atol=1e-9)


def test_readme_torch_sim_md_with_the_deployed_file(tmp_path):
    """The README's torch-sim example: 4 replicas through torch-sim's own runner, with the deployed file."""
    import torch_sim as ts

    student = tiny_painn("conservative")
    path = deploy_student(student, tmp_path / "deployed.pt")
    model = TorchSimModel(DeployedModel(path))
    atoms = rattled("CH3OH", seed=1)
    final = ts.integrate(system=[atoms] * 4, model=model, integrator=ts.nvt_langevin, n_steps=5, temperature=300.0,
                         timestep=0.0005)
    positions = final.positions.view(4, len(atoms), 3)
    assert final.n_systems == 4 and torch.isfinite(positions).all()
    assert (positions[0] - positions[1]).abs().max() > 1e-6  # replicas with their own velocities and noise
    energy = model(final)["energy"]
    torch.testing.assert_close(energy, student.energy_forces(make_batch(
        [atoms.__class__(atoms.numbers, p.numpy()) for p in positions]))[0], rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, force_mode", [("painn", "direct"), ("gemnet_dt", "conservative"), ("mace", "direct")])
def test_a_file_deployed_for_cpu_and_cuda_gives_the_same_results_on_both(name, force_mode, tmp_path):
    student = build(name, force_mode)
    path = deploy_student(student, tmp_path / "deployed.pt", devices=("cpu", "cuda"))
    structures = untraced()
    energy, forces = student.energy_forces(make_batch(structures))
    e_cuda, f_cuda = DeployedModel(path, "cuda").energy_forces(make_batch(structures).to("cuda"))
    scale = float(forces.abs().max())
    torch.testing.assert_close(e_cuda.cpu(), energy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f_cuda.cpu(), forces, rtol=1e-8, atol=1e-9 * scale)
    atoms = structures[0]
    atoms.calc = metatomic_calculator(path, direct=force_mode == "direct")  # picks cuda, the first it can use
    assert atoms.get_potential_energy() == pytest.approx(float(energy[0]), rel=1e-9)
