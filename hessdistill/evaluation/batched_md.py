"""Batched MD through torch-sim: many replicas of a structure in one model call per step, for NVT stability, NVE
drift and MD throughput (the same criteria as the ASE reference path, ``hessdistill.evaluation.md``).

Replicas start from the same structure with independent Maxwell–Boltzmann velocities. Stability: a replica fails
at the first step where a bond deviates more than ``max_deviation`` Å from its equilibrium length (minimum-image
bond vectors in periodic cells); failed replicas keep running with the others and the run stops when all have
failed. Throughput: velocity-Verlet steps per second with R replicas, as ns/day *per trajectory* (each replica
advances by one timestep per step) and in total (× R); the replica count that maximises the total is found by
doubling R (``speed.doubling_search``), as ``speed.best_batch`` does for single calls.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from ase import units

from hessdistill.evaluation.md import bond_lengths, bonds_of, energy_drift, equilibrium_lengths
from hessdistill.evaluation.speed import _sync, doubling_search, ns_per_day
from hessdistill.integrations.torchsim import TorchSimModel

FS = units.fs  # 1 fs in ASE's (= torch-sim's metal) time unit


def replica_state(atoms, replicas: int, device: torch.device, dtype: torch.dtype = torch.float64):
    """A torch-sim state of ``replicas`` copies of ``atoms`` (all periodic or all not)."""
    from torch_sim.io import atoms_to_state

    return atoms_to_state([atoms] * replicas, device, dtype)


def initial_momenta(atoms, replicas: int, temperature_K: float, seed: int) -> np.ndarray:
    """(R·N, 3) Maxwell–Boltzmann momenta (amu·Å/time unit) of R replicas, each without centre-of-mass motion."""
    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    p = rng.normal(size=(replicas, len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_K)
    p -= masses * (p.sum(axis=1, keepdims=True) / masses.sum())
    return p.reshape(-1, 3)


def md_state(model: TorchSimModel, state, momenta: np.ndarray):
    """torch-sim's MD state at ``state`` with ``momenta``, forces and energies evaluated."""
    from torch_sim.integrators.md import MDState

    out = model(state)
    return MDState(positions=state.positions, momenta=torch.as_tensor(momenta, dtype=state.dtype, device=state.device),
                   energy=out["energy"], forces=out["forces"], masses=state.masses, cell=state.cell, pbc=state.pbc,
                   system_idx=state.system_idx, atomic_numbers=state.atomic_numbers)


def replica_bond_deviation(state, replicas: int, bonds: np.ndarray, equilibrium: np.ndarray) -> np.ndarray:
    """(R,) max bond deviation (Å) of every replica (minimum-image bond vectors when the state is periodic)."""
    if len(bonds) == 0:
        return np.zeros(replicas)
    pos = state.positions.detach().view(replicas, -1, 3)
    d = pos[:, bonds[:, 1]] - pos[:, bonds[:, 0]]  # (R, K, 3)
    if state.pbc:
        cell = state.row_vector_cell[0].detach()
        d = d - torch.round(d @ torch.linalg.inv(cell)) @ cell
    lengths = d.norm(dim=-1).cpu().double().numpy()
    return np.abs(lengths - equilibrium).max(axis=1)


def nvt_stability(atoms, model, replicas: int = 8, equilibrium: np.ndarray | None = None,
                  bonds: np.ndarray | None = None, steps: int = 1000, temperature_K: float = 300.0,
                  timestep_fs: float = 1.0, friction_per_fs: float = 0.01, max_deviation: float = 0.5,
                  seed: int = 0, record_every: int = 10) -> list[dict]:
    """Langevin NVT (torch-sim's BAOAB) of ``replicas`` copies of ``atoms`` with ``model`` (``energy_forces``
    protocol). Returns one run per replica as ``md.nvt_stability`` does: time_to_failure_ps (None if stable),
    simulated_ps and the trace (times ps, max deviation Å) up to its failure."""
    from torch_sim.integrators.nvt import nvt_langevin

    sim = TorchSimModel(model)
    bonds = bonds_of(atoms) if bonds is None else bonds
    equilibrium = bond_lengths(atoms.positions, bonds) if equilibrium is None else equilibrium
    dt = torch.tensor(timestep_fs * FS, dtype=sim.dtype, device=sim.device)
    kT = torch.tensor(units.kB * temperature_K, dtype=sim.dtype, device=sim.device)
    gamma = torch.tensor(friction_per_fs / FS, dtype=sim.dtype, device=sim.device)
    _, update = nvt_langevin(sim, dt=dt, kT=kT, gamma=gamma, seed=seed)
    state = md_state(sim, replica_state(atoms, replicas, sim.device, sim.dtype),
                     initial_momenta(atoms, replicas, temperature_K, seed))
    runs = [{"time_to_failure_ps": None, "simulated_ps": 0.0, "times_ps": [], "max_bond_deviation_A": []}
            for _ in range(replicas)]
    # torch-sim draws the Langevin noise from torch's global generator: seed it here, restore it after
    with torch.random.fork_rng(devices=[sim.device] if sim.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for step in range(1, steps + 1):
            state = update(state, dt=dt, kT=kT, gamma=gamma)
            deviation = replica_bond_deviation(state, replicas, bonds, equilibrium)
            now = step * timestep_fs * 1e-3
            for run, d in zip(runs, deviation):
                if run["time_to_failure_ps"] is not None:
                    continue
                run["simulated_ps"] = now
                if step % record_every == 0 or d > max_deviation:
                    run["times_ps"].append(now)
                    run["max_bond_deviation_A"].append(float(d))
                if d > max_deviation:
                    run["time_to_failure_ps"] = now
            if all(run["time_to_failure_ps"] is not None for run in runs):
                break
    return runs


def nve_drift(atoms, model, replicas: int = 8, steps: int = 1000, temperature_K: float = 300.0,
              timestep_fs: float = 1.0, seed: int = 0, record_every: int = 10) -> list[dict]:
    """Velocity Verlet of ``replicas`` copies of ``atoms``; one run per replica as ``md.nve_drift`` returns:
    drift_eV_per_atom_per_ps (slope of total energy per atom against time) and the energy trace."""
    from torch_sim.integrators.md import velocity_verlet

    sim = TorchSimModel(model)
    dt = torch.tensor(timestep_fs * FS, dtype=sim.dtype, device=sim.device)
    state = md_state(sim, replica_state(atoms, replicas, sim.device, sim.dtype),
                     initial_momenta(atoms, replicas, temperature_K, seed))
    times, energies = [0.0], [total_energy_per_atom(state, replicas)]
    for step in range(record_every, steps + 1, record_every):
        for _ in range(record_every):
            state = velocity_verlet(state, dt, sim)
        times.append(step * timestep_fs * 1e-3)
        energies.append(total_energy_per_atom(state, replicas))
    return [{"drift_eV_per_atom_per_ps": energy_drift(np.array(times), trace), "times_ps": times,
             "total_energy_eV_per_atom": trace.tolist()} for trace in np.array(energies).T]


def md_report(structures, models: dict, training: list, steps: int, nve_steps: int, replicas: int = 8,
              temperature_K: float = 300.0, timestep_fs: float = 1.0, friction_per_fs: float = 0.01,
              max_deviation: float = 0.5, seed: int = 0) -> dict:
    """``md.md_report`` with torch-sim: ``replicas`` NVT and NVE runs of every model from each structure, all
    replicas of a structure in one batch; the same report layout (one entry per replica)."""
    out = {name: {"nvt": [], "nve": []} for name in models}
    for k, atoms in enumerate(structures):
        bonds = bonds_of(atoms)
        equilibrium = equilibrium_lengths(atoms, bonds, training)
        for name, model in models.items():
            out[name]["nvt"] += nvt_stability(atoms, model, replicas, equilibrium, bonds, steps, temperature_K,
                                              timestep_fs, friction_per_fs, max_deviation, seed + k)
            if nve_steps:
                out[name]["nve"] += nve_drift(atoms, model, replicas, nve_steps, temperature_K, timestep_fs, seed + k)
    return out


def total_energy_per_atom(state, replicas: int) -> np.ndarray:
    """(R,) potential + kinetic energy per atom (eV) of every replica."""
    kinetic = (state.momenta.detach() ** 2 / (2 * state.masses[:, None])).sum(dim=1).view(replicas, -1).sum(dim=1)
    n_atoms = state.positions.shape[0] // replicas
    return ((state.energy.detach().double() + kinetic.double()) / n_atoms).cpu().numpy()


def md_steps_per_second(atoms, model, replicas: int, steps: int = 10, timestep_fs: float = 1.0) -> float:
    """Velocity-Verlet steps per second with ``replicas`` copies of ``atoms`` (one warm-up step first)."""
    from torch_sim.integrators.md import velocity_verlet

    sim = TorchSimModel(model)
    dt = torch.tensor(timestep_fs * FS, dtype=sim.dtype, device=sim.device)
    state = md_state(sim, replica_state(atoms, replicas, sim.device, sim.dtype),
                     initial_momenta(atoms, replicas, 300.0, 0))
    state = velocity_verlet(state, dt, sim)
    _sync(sim.device)
    start = time.perf_counter()
    for _ in range(steps):
        state = velocity_verlet(state, dt, sim)
    _sync(sim.device)
    return steps / (time.perf_counter() - start)


def md_throughput(atoms, model, batch: int = 64, max_replicas: int = 4096, steps: int = 10,
                  timestep_fs: float = 1.0, gain: float = 1.05) -> dict:
    """MD throughput of ``atoms`` with ``model``: ns/day per trajectory and in total at ``batch`` replicas and at the
    replica count that maximises the total (doubling from 1 while the total improves by ≥ ``gain``, until
    ``max_replicas`` or out of memory; ``batch`` itself if it beats that)."""
    def total(replicas: int) -> float:
        return replicas * md_steps_per_second(atoms, model, replicas, steps, timestep_fs)

    single = total(1)
    best, best_rate = doubling_search(total, 1, max_replicas, single, gain)
    at_batch = total(batch)
    if at_batch > best_rate:  # the doubling stops at the first gain below `gain`; a larger count may still win
        best, best_rate = batch, at_batch
    return {"batch": batch, "per_trajectory_ns_per_day": ns_per_day(at_batch / batch, timestep_fs),
            "total_ns_per_day": ns_per_day(at_batch, timestep_fs), "best_replicas": best,
            "best_per_trajectory_ns_per_day": ns_per_day(best_rate / best, timestep_fs),
            "best_total_ns_per_day": ns_per_day(best_rate, timestep_fs),
            "single_trajectory_ns_per_day": ns_per_day(single, timestep_fs)}
