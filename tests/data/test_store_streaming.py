"""Stores at scale: written chunk by chunk from a stream (the same datasets as written at once), statistics and
fingerprint in block-wise passes (equal to the whole-array computations), a subset built from a streamed source."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
from ase.build import bulk, molecule
from omegaconf import OmegaConf

import hessdistill.data.store as store_module
from hessdistill.data.statistics import element_counts
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import Structure
from hessdistill.data.subset import build_store

NAMES = ["H2O", "CH4", "NH3", "CH3OH", "HCOOH", "CH3CH2OH", "HCN", "N2H4", "CH3NO2", "H2CO", "C2H2", "NO2"]


def structures(rng, n: int = 40) -> list[Structure]:
    """Molecules and a periodic cell with noisy, roughly additive energies (eV) and random forces (eV/Å)."""
    out = []
    for k in range(n):
        atoms = bulk("Si", "diamond", a=5.43) if k % 10 == 9 else molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.05, seed=k)
        s = Structure.from_atoms(atoms, source=f"made[{k}]")
        s.energy = float(-10.0 * atoms.numbers.sum() + rng.normal())
        s.forces = rng.normal(size=(len(atoms), 3))
        s.info = {"molecule": atoms.get_chemical_formula(), "k": k}
        out.append(s)
    return out


def datasets(path) -> dict[str, tuple]:
    """Every /structures dataset's dtype, shape, layout and raw bytes."""
    with h5py.File(path) as f:
        g = f["structures"]
        return {name: (g[name].dtype, g[name].shape, g[name].chunks, g[name][:].tobytes() if name != "info"
                       else tuple(g[name][:])) for name in g}


def test_a_store_written_in_chunks_equals_one_written_at_once(tmp_path, rng):
    made = structures(rng)
    write_structures(tmp_path / "once.h5", made, chunk_size=len(made))
    write_structures(tmp_path / "chunks.h5", iter(made), chunk_size=3)  # a stream, 14 appends
    once, chunks = datasets(tmp_path / "once.h5"), datasets(tmp_path / "chunks.h5")
    assert once == chunks
    with HessianStore(tmp_path / "chunks.h5") as store:
        assert len(store) == 40 and store.n_atoms().tolist() == [s.n_atoms for s in made]
        for i in (0, 9, 39):
            got = store.structure(i)
            assert np.array_equal(got.positions, made[i].positions) and got.energy == made[i].energy
            assert np.array_equal(got.forces, made[i].forces) and got.info == {**made[i].info,
                                                                                "source": f"made[{i}]"}


def test_a_failed_stream_leaves_no_store(tmp_path, rng):
    def broken():
        yield from structures(rng, 5)
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        write_structures(tmp_path / "s.h5", broken(), chunk_size=2)
    assert list(tmp_path.iterdir()) == []  # neither the store nor its partial file
    with pytest.raises(StoreError, match=r"s\.h5: no structures to write"):
        write_structures(tmp_path / "s.h5", iter([]))


def direct_statistics(made: list[Structure], indices) -> tuple[np.ndarray, float]:
    """The statistics as the store computed them before streaming: one lstsq over the whole count matrix."""
    counts = np.zeros((len(indices), 119))
    for row, i in enumerate(indices):
        np.add.at(counts[row], made[i].z, 1)
    present = counts.any(axis=0)
    coef, *_ = np.linalg.lstsq(counts[:, present], np.array([made[i].energy for i in indices]), rcond=None)
    refs = np.zeros(119)
    refs[present] = coef
    forces = np.concatenate([made[i].forces for i in indices])
    return refs, float(np.sqrt((forces**2).mean()))


def test_streamed_statistics_equal_a_direct_least_squares(tmp_path, rng, monkeypatch):
    made = structures(rng)
    path = tmp_path / "s.h5"
    write_structures(path, made, chunk_size=7)
    monkeypatch.setattr(store_module, "BLOCK_ATOMS", 20)  # many blocks, most cutting between structures

    def check(store, indices):
        refs, force_rms = store.energy_statistics(indices)
        want_refs, want_rms = direct_statistics(made, np.arange(40) if indices is None else np.sort(indices))
        np.testing.assert_allclose(refs, want_refs, rtol=1e-10, atol=1e-10 * np.abs(want_refs).max())
        assert force_rms == pytest.approx(want_rms, rel=1e-12)
        assert np.array_equal(refs == 0, want_refs == 0)  # absent elements stay exactly 0
        return refs

    with HessianStore(path) as store:
        assert len(list(store.blocks())) > 10
        recorded = check(store, None)  # recorded while writing
        check(store, np.sort(rng.choice(40, size=30, replace=False)))  # a training split: streamed
        check(store, np.arange(40)[::-1])
    with h5py.File(path, "a") as f:  # a store written before statistics were recorded: streamed over everything
        del f.attrs["energy_statistics"]
    with HessianStore(path) as store:
        np.testing.assert_allclose(check(store, None), recorded, rtol=1e-12)


def test_element_counts_per_structure():
    counts = element_counts(np.array([8, 1, 1, 6, 1, 1, 1, 1]), np.array([3, 5]))
    assert counts.shape == (2, 119) and counts[0, [1, 8]].tolist() == [2, 1] and counts[1, [1, 6]].tolist() == [4, 1]
    assert counts.sum() == 8


def test_block_fingerprint_equals_the_whole_array_hash(tmp_path, rng, monkeypatch):
    made = structures(rng)
    write_structures(tmp_path / "s.h5", made)
    with HessianStore(tmp_path / "s.h5") as store:
        h = hashlib.sha1()  # the fingerprint as it was, of whole arrays: split files made before stay valid
        for array in (store.offsets.astype(np.int64), np.concatenate([s.z for s in made]).astype(np.int64),
                      np.concatenate([s.positions for s in made])):
            h.update(np.ascontiguousarray(array).tobytes())
        assert store.fingerprint() == h.hexdigest()
        monkeypatch.setattr(store_module, "BLOCK_ATOMS", 7)
        assert len(list(store.blocks())) > 20
        assert store.fingerprint() == h.hexdigest() and store.info_values("k") == list(range(40))


def test_build_store_streams_a_source_through_the_selection_in_chunks(tmp_path, rng):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k in range(30):
        atoms = molecule("CH3Cl" if k % 10 == 0 else "CH4")
        atoms.rattle(0.05, seed=k)
        atoms.info["frame"] = f"f{k}"
        atoms.calc = SinglePointCalculator(atoms, energy=-float(k), forces=rng.normal(size=(len(atoms), 3)))
        frames.append(atoms)
    ase.io.write(tmp_path / "frames.extxyz", frames)
    cfg = OmegaConf.create({"name": "t", "store": str(tmp_path / "t.h5"),
                            "select": [{"_target_": "hessdistill.data.selectors.ContainsElements", "elements": ["Cl"]}],
                            "source": {"_target_": "hessdistill.data.sources.ase_files.read_ase",
                                       "path": str(tmp_path / "frames.extxyz")}})
    with HessianStore(build_store(cfg, chunk_size=2)) as store:
        assert store.info_values("frame") == ["f0", "f10", "f20"]
        assert [store.structure(i).energy for i in range(3)] == [0.0, -10.0, -20.0]
