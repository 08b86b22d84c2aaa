"""The append-only extxyz label log: round trips, and recovery from a partial trailing frame."""

from __future__ import annotations

import io

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from hessdistill.labelling.append_log import append_frame, read_complete


def labelled_frame(name: str, seed: int):
    atoms = molecule(name)
    atoms.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal(-1000.0, 5.0)),
                                       forces=rng.normal(size=(len(atoms), 3)))
    atoms.info.update(molecule=name, seed=seed, frame=seed % 3)
    return atoms


def frame_text(atoms) -> str:
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    return buffer.getvalue()


def assert_same_frame(got, ref):
    np.testing.assert_array_equal(got.numbers, ref.numbers)
    np.testing.assert_allclose(got.positions, ref.positions, rtol=0, atol=1e-7)
    assert got.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(got.get_forces(), ref.get_forces(), rtol=0, atol=1e-7)
    for key in ("molecule", "seed", "frame"):
        assert got.info[key] == ref.info[key]


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "log.extxyz"
    assert read_complete(path) == []  # a missing log is an empty one
    frames = [labelled_frame(name, k) for k, name in enumerate(["H2O", "CH4", "NH3", "CH3OH"])]
    for atoms in frames:
        append_frame(path, atoms)
    got = read_complete(path)
    assert len(got) == len(frames)
    for g, ref in zip(got, frames):
        assert_same_frame(g, ref)
    assert path.read_text() == "".join(frame_text(a) for a in frames)  # read_complete left a clean file alone


def test_partial_trailing_frame_is_dropped_at_every_cut_point(tmp_path):
    frames = [labelled_frame("H2O", 1), labelled_frame("CH3OH", 2)]
    complete = "".join(frame_text(a) for a in frames)
    tail = frame_text(labelled_frame("NH3", 3))
    path = tmp_path / "log.extxyz"
    for cut in range(1, len(tail)):  # every way a killed write can end
        path.write_text(complete + tail[:cut])
        got = read_complete(path)
        assert len(got) == 2, f"cut at {cut}: {tail[:cut]!r}"
        assert path.read_text() == complete, f"cut at {cut}: file not truncated to the complete frames"


def test_resumed_append_after_truncation_gives_a_clean_file(tmp_path):
    path = tmp_path / "log.extxyz"
    first, second, third = labelled_frame("H2O", 1), labelled_frame("CH4", 2), labelled_frame("NH3", 3)
    append_frame(path, first)
    append_frame(path, second)
    text = frame_text(third)
    with open(path, "a") as handle:  # a job killed halfway through a frame
        handle.write(text[: len(text) // 2])
    with pytest.raises(Exception):  # noqa: B017 (whatever ASE raises: the raw file is not readable as is)
        ase.io.read(path, index=":", format="extxyz")

    assert len(read_complete(path)) == 2
    append_frame(path, third)  # the resumed job writes the frame again
    frames = ase.io.read(path, index=":", format="extxyz")  # the whole file parses
    assert len(frames) == 3
    for got, ref in zip(frames, [first, second, third]):
        assert_same_frame(got, ref)
    assert len(read_complete(path)) == 3


def test_log_holding_only_a_partial_frame_becomes_empty(tmp_path):
    path = tmp_path / "log.extxyz"
    text = frame_text(labelled_frame("H2O", 0))
    path.write_text(text[:-5])
    assert read_complete(path) == []
    assert path.read_text() == ""
    append_frame(path, labelled_frame("CH4", 1))
    assert len(read_complete(path)) == 1
