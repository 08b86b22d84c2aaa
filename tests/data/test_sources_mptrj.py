"""MPtrj JSON reader on a file in MPtrj's exact layout (pymatgen Structure dicts), without pymatgen."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from hessdistill.data.sources.mptrj import read_mptrj
from hessdistill.data.structures import InvalidStructureError


def frame(atoms, energy, forces, corrected):
    cell = np.asarray(atoms.cell)
    return {
        "structure": {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
                      "lattice": {"matrix": cell.tolist(), "pbc": [True, True, True]},
                      "sites": [{"species": [{"element": s, "occu": 1}], "abc": list(f), "xyz": list(x), "label": s,
                                 "properties": {"magmom": 0.0}}
                                for s, f, x in zip(atoms.get_chemical_symbols(), atoms.get_scaled_positions(),
                                                   atoms.positions)]},
        "uncorrected_total_energy": energy, "corrected_total_energy": corrected, "energy_per_atom": energy / len(atoms),
        "ef_per_atom": 0.1, "force": forces.tolist(), "stress": np.zeros((3, 3)).tolist(), "magmom": None,
        "bandgap": 1.25, "mp_id": "mp-1234",
    }


def test_round_trip_of_mptrj_layout(tmp_path, rng):
    yn = bulk("YN", "rocksalt", a=4.9)
    yn.rattle(0.02, seed=1)
    si = bulk("Si", "diamond", a=5.43)
    forces = [rng.normal(size=(len(a), 3)) for a in (yn, si)]
    data = {"mp-1234": {"mp-1234-0-0": frame(yn, -20.5, forces[0], -21.0)},
            "mp-149": {"mp-149-1-2": frame(si, -10.8, forces[1], -10.9)}}
    path = tmp_path / "mptrj.json"
    path.write_text(json.dumps(data))
    structures = list(read_mptrj(path))
    assert [s.info["frame_id"] for s in structures] == ["mp-1234-0-0", "mp-149-1-2"]
    s = structures[0]
    np.testing.assert_array_equal(s.z, yn.numbers)
    np.testing.assert_allclose(s.positions, yn.positions)
    np.testing.assert_allclose(s.cell, np.asarray(yn.cell))
    assert s.pbc.all() and s.energy == -20.5 and s.info["bandgap"] == 1.25 and s.info["mp_id"] == "mp-1234"
    np.testing.assert_allclose(s.forces, forces[0])
    assert list(read_mptrj(path, energy_key="corrected_total_energy"))[1].energy == -10.9


def test_malformed_frames_name_file_and_frame(tmp_path, rng):
    si = bulk("Si", "diamond", a=5.43)
    good = frame(si, -10.8, rng.normal(size=(2, 3)), -10.9)
    for mutate, message in [(lambda f: f["structure"].pop("lattice"), "malformed 'structure'"),
                            (lambda f: f["structure"]["sites"][0]["species"][0].update(element="Xx"),
                             "unknown element"),
                            (lambda f: f.update(force=[[0.0, 0.0, 0.0]]), "forces have shape"),
                            (lambda f: f.pop("uncorrected_total_energy"), "missing reference energy")]:
        bad = json.loads(json.dumps(good))
        mutate(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"mp-149": {"mp-149-0-0": bad}}))
        with pytest.raises(InvalidStructureError, match=rf"bad\.json\[mp-149\]\[mp-149-0-0\].*{message}"):
            list(read_mptrj(path))
