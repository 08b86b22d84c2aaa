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


# ---- streaming ---------------------------------------------------------------------------------------------------
def materials_file(path, rng, n_materials: int, frames_per_material: int = 3, yttrium_every: int = 0):
    """An MPtrj-layout file of rattled rocksalt cells (8 atoms): ScN, or YN for every ``yttrium_every``-th material
    (0: none). Returns the parsed dict (what ``json.loads`` gives)."""
    data = {}
    for m in range(n_materials):
        atoms = bulk("YN" if yttrium_every and m % yttrium_every == 0 else "ScN", "rocksalt", a=4.5, cubic=True)
        frames = {}
        for k in range(frames_per_material):
            atoms.rattle(0.01, seed=m * 100 + k)
            frames[f"mp-{m}-{k}"] = frame(atoms, -8.0 * len(atoms) + k, rng.normal(size=(len(atoms), 3)), -9.0)
        data[f"mp-{m}"] = frames
    path.write_text(json.dumps(data))
    return data


def test_stream_equals_a_whole_file_parse(tmp_path, rng):
    from hessdistill.data.sources.mptrj import _frame_structure

    path = tmp_path / "mptrj.json"
    data = materials_file(path, rng, n_materials=4)
    stream = read_mptrj(path)
    assert iter(stream) is stream and not isinstance(stream, list)  # an iterator, not a list of every frame
    whole = [(m, f, _frame_structure(fr, f"{path}[{m}][{f}]", "uncorrected_total_energy", True))
             for m, frames in data.items() for f, fr in frames.items()]  # the reader before streaming: json.loads
    got = list(stream)
    assert len(got) == len(whole) == 12
    for s, (mp_id, frame_id, ref) in zip(got, whole):
        assert s.info == {**ref.info, "mp_id": mp_id, "frame_id": frame_id} and s.source == ref.source
        assert s.energy == ref.energy  # bit-equal: ijson's floats are Python's float parse of the same digits
        for name in ("z", "positions", "cell", "pbc", "forces"):
            assert np.array_equal(getattr(s, name), getattr(ref, name)), name


def test_stream_yields_frames_before_reading_the_rest_of_the_file(tmp_path, rng):
    path = tmp_path / "truncated.json"
    materials_file(path, rng, n_materials=3)
    text = path.read_text()
    path.write_text(text[: int(len(text) * 0.8)])  # the last material cut off mid-way
    stream = read_mptrj(path)
    first = next(stream)  # a whole-file parse would fail here
    assert first.info["frame_id"] == "mp-0-0"
    with pytest.raises(InvalidStructureError, match=r"truncated\.json: not valid JSON after [0-9]+ frames"):
        list(stream)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(InvalidStructureError, match=r"empty\.json: holds no frames; expected MPtrj's layout"):
        list(read_mptrj(empty))


def test_selecting_a_few_frames_holds_one_material_not_the_file(tmp_path, rng):
    import tracemalloc

    from hessdistill.data.selectors import ContainsElements, Selection

    def selected_with_peak(n_materials):
        path = tmp_path / f"mptrj-{n_materials}.json"
        materials_file(path, rng, n_materials=n_materials, yttrium_every=50)
        next(read_mptrj(path))  # imports and first-call allocations outside the measurement
        selection = Selection([ContainsElements(["Y"])])
        tracemalloc.start()
        try:
            kept = list(selection(read_mptrj(path)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(kept) == 3 * n_materials // 50 and selection.seen == 3 * n_materials
        assert all(39 in s.z for s in kept)
        return peak, path.stat().st_size

    small, _ = selected_with_peak(100)
    large, size = selected_with_peak(400)
    # flat in the file's size (json.loads of a file takes ~5x its size), and well under the file itself
    assert large < 1.5 * small and large < size / 3, (small, large, size)
