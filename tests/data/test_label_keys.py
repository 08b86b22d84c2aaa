"""extxyz files whose labels are not under ``energy``/``forces`` (MACE-style ``REF_energy``, ``REF_forces``): the
subset's source names the keys, and a file read with the wrong ones gets an error naming the keys it has."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import rattled
from hessdistill.data.sources.ase_files import read_ase
from hessdistill.data.store import HessianStore, StoreError
from hessdistill.data.structures import InvalidStructureError
from hessdistill.data.subset import build_store


def keyed_file(path, energy_key: str, forces_key: str, n: int = 3, rng=None):
    """Rattled molecules with labels under the given keys only (info and per-atom arrays, no calculator), as MACE's
    training files carry them; returns the path and the (energy eV, forces eV/Å) written."""
    rng = rng or np.random.default_rng(0)
    frames, labels = [], []
    for k in range(n):
        atoms = rattled(("H2O", "CH4", "NH3")[k % 3], seed=k)
        energy, forces = float(rng.normal(-1000, 50)), rng.normal(size=(len(atoms), 3))
        atoms.info[energy_key] = energy
        atoms.arrays[forces_key] = forces
        frames.append(atoms)
        labels.append((energy, forces))
    ase.io.write(path, frames, format="extxyz")
    return path, labels


def test_ref_keys_are_read_when_named(tmp_path):
    path, labels = keyed_file(tmp_path / "mace.extxyz", "REF_energy", "REF_forces")
    assert "REF_energy=" in path.read_text() and "REF_forces:R:3" in path.read_text()  # the real MACE format
    read = list(read_ase(path, energy_key="REF_energy", forces_key="REF_forces"))
    assert len(read) == 3
    for structure, (energy, forces) in zip(read, labels):
        assert structure.energy == pytest.approx(energy, abs=1e-8)
        np.testing.assert_allclose(structure.forces, forces, atol=1e-8)
        assert "REF_energy" not in structure.info  # the label, not free metadata
    # units apply to named keys as to the default ones
    (first, *_) = read_ase(path, energy_unit=0.5, length_unit=2.0, energy_key="REF_energy", forces_key="REF_forces")
    assert first.energy == pytest.approx(0.5 * labels[0][0])
    np.testing.assert_allclose(first.forces, labels[0][1] * 0.25, atol=1e-8)


def test_missing_labels_name_the_keys_the_file_has_and_how_to_set_them(tmp_path):
    path, _ = keyed_file(tmp_path / "mace.extxyz", "REF_energy", "REF_forces")
    with pytest.raises(InvalidStructureError) as caught:
        list(read_ase(path))
    message = str(caught.value)
    assert "mace.extxyz[frame 0]: missing reference energy (key 'energy') and forces (key 'forces')" in message
    assert "'REF_energy'" in message and "'REF_forces'" in message  # the keys it does have
    assert "subset.source.energy_key=REF_energy subset.source.forces_key=REF_forces" in message
    # another naming: the suggestion is the file's own key
    other, _ = keyed_file(tmp_path / "dft.extxyz", "dft_energy", "dft_forces", n=1)
    with pytest.raises(InvalidStructureError, match="energy_key: dft_energy, forces_key: dft_forces"):
        list(read_ase(other))
    with pytest.raises(InvalidStructureError, match=r"missing reference forces \(key 'forces'\)"):
        list(read_ase(other, energy_key="dft_energy"))


def test_a_subset_names_its_keys_and_a_store_built_with_others_is_stale(tmp_path):
    path, labels = keyed_file(tmp_path / "mace.extxyz", "REF_energy", "REF_forces")
    source = {"_target_": "hessdistill.data.sources.ase_files.read_ase", "path": str(path),
              "energy_key": "REF_energy", "forces_key": "REF_forces"}
    subset = OmegaConf.create({"name": "mine", "store": str(tmp_path / "mine.h5"), "select": [], "source": source})
    with HessianStore(build_store(subset)) as store:
        assert [store.structure(k).energy for k in range(3)] == pytest.approx([e for e, _ in labels])
    subset.source.energy_key = "energy"  # other labels than the store holds
    with pytest.raises(StoreError, match="energy_key 'REF_energy' -> 'energy'"):
        build_store(subset)


def test_a_store_built_before_the_keys_existed_is_still_reused(tmp_path):
    """A store whose record predates energy_key/forces_key (no such arguments) stays valid at their defaults."""
    import json

    path, _ = keyed_file(tmp_path / "plain.extxyz", "energy", "forces")
    subset = OmegaConf.create({"name": "old", "store": str(tmp_path / "old.h5"), "select": [],
                               "source": {"_target_": "hessdistill.data.sources.ase_files.read_ase",
                                          "path": str(path)}})
    store_path = build_store(subset)
    with HessianStore(store_path, mode="a") as store:  # the record as the reader without the keys wrote it
        record = json.loads(store.file.attrs["subset_source_record"])
        assert record["arguments"].pop("energy_key") == "energy" and record["arguments"].pop("forces_key") == "forces"
        store.file.attrs["subset_source_record"] = json.dumps(record)
    assert build_store(subset) == store_path
    subset.source.energy_key = "REF_energy"
    with pytest.raises(StoreError, match="energy_key None -> 'REF_energy'"):
        build_store(subset)
