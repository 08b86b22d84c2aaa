"""Hostile or unlucky inputs get one clear error, and nothing non-finite reaches a store or a metric: float16
overflow refused at write time, non-finite rows refused at read time, a diverging run stopped at its first
non-finite loss, an empty validation split refused before training."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from conftest import compose_config
from hessdistill.data.store import HessianStore, StoreError


def test_float16_overflow_is_refused_at_write_time(tmp_path, labelled_store):
    path = tmp_path / "s.h5"
    shutil.copy(labelled_store, path)
    with HessianStore(path, "a") as store:
        n = store.n_atoms(0)
        store.create_teacher("half", {"teacher": "half"}, dtype="float16")
        huge = np.full((3 * n, 3 * n), 7.0e4)  # eV/Å², above float16's 65504
        with pytest.raises(StoreError, match=r"s.h5\[0\]: teacher half Hessian entries up to 7e\+04 eV/Å² do not "
                                             r"fit the store's float16 .*storage.dtype=float32"):
            store.write_teacher("half", 0, -1.0, np.zeros((n, 3)), huge)
        assert not store.teacher_done("half").any()  # nothing marked done


def test_non_finite_rows_marked_done_are_refused_at_read_time(tmp_path, labelled_store):
    path = tmp_path / "s.h5"
    shutil.copy(labelled_store, path)
    with HessianStore(path, "a") as store:  # a hostile file: NaN written past the store's checks and its digest
        h0 = int(store.file["teachers/ani1x/hessian_offsets"][2])
        store.file["teachers/ani1x/hessian"][h0 + 1] = np.nan
        del store.file["teachers/ani1x/digest"]  # as in a store of an older version (a sealed one refuses any edit)
    with HessianStore(path) as store:
        np.testing.assert_array_equal(store.hessian_rows("ani1x", 1, [0]), store.hessian_rows("ani1x", 1, [0]))
        with pytest.raises(StoreError, match=r"s.h5\[2\]: teacher ani1x has non-finite Hessian entries in rows "
                                             r"\[0\] although they are marked done"):
            store.hessian_rows("ani1x", 2, [0])


def test_a_diverging_run_stops_at_its_first_non_finite_loss(tmp_path, labelled_store, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "trainer.max_epochs=3",
                                   "optimizer.lr=1.0e30", "student.hidden_channels=16", "student.num_layers=2",
                                   "subset.batch_size=4", f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at epoch \d+, step \d+ .*structures \["):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_empty_validation_split_is_refused_before_training(tmp_path, labelled_store, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "subset.split=[1.0,0.0,0.0]",
                                   f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"subset.split=\[1.0, 0.0, 0.0\] leaves the val split of its 16 structures "
                                         r"empty"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- structure files: bounded reading, one line for what is wrong ------------------------------------------------
def structure_readers(tmp_path):
    """Every reader of a user's structure file: the read_ase source, hessdistill-predict, hessdistill-label
    --structures."""
    from pathlib import Path

    from conftest import tiny_painn
    from hessdistill.cli.label import given_frames
    from hessdistill.data.sources.ase_files import read_ase
    from hessdistill.integrations.predict import predict_file

    return {"read_ase": lambda path: list(read_ase(path, require_labels=False)),
            "predict": lambda path: predict_file(tiny_painn("direct"), path, Path(tmp_path) / "out.xyz"),
            "label": lambda path: given_frames(str(path))}


HUGE_COUNT = """
    import sys
    sys.path.insert(0, {tests!r})
    from workflow.test_hostile_inputs import structure_readers
    from hessdistill.data.structures import InvalidStructureError
    for name, read in structure_readers({tmp!r}).items():
        try:
            read({path!r})
        except InvalidStructureError as exc:
            print(name, exc)
"""


def test_an_atom_count_the_file_cannot_hold_is_refused_at_once(tmp_path):
    """A header claiming 10⁹ atoms kept ASE reading past the end of the file for hours; in a subprocess with a
    timeout, so that the old behaviour fails instead of hanging the suite."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    path = tmp_path / "huge.xyz"
    path.write_text("2\nProperties=species:S:1:pos:R:3\nC 0 0 0\nO 1.2 0 0\n1000000000\n\nC 0 0 0\n")
    script = textwrap.dedent(HUGE_COUNT).format(tests=str(Path(__file__).parents[1]), tmp=str(tmp_path),
                                                path=str(path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["read_ase", "predict", "label"], out.stdout + out.stderr[-2000:]
    for line in lines:
        assert line.split(" ", 1)[1] == (f"{path}[frame 1]: line 5 gives 1000000000 atoms, more than the 9 bytes "
                                         f"left in the file can hold: a damaged or truncated file")


BAD_FILES = {  # name → (content, message after the file's path)
    "empty.xyz": (b"", r": empty file \(0 bytes\), no structures"),
    "blank.xyz": (b"\n \n", r": holds no structures \(the file is 3 bytes of blank lines\)"),
    "binary.xyz": (bytes(range(200, 256)) * 10, r": line 1 holds byte 0xc8, which is not text: a binary file"),
    "words.xyz": (b"hello\nworld\n", r": cannot be read by ASE as xyz/extxyz: line 1 should give a number of atoms, "
                                     r"but reads 'hello'"),
    "non_numeric.xyz": (b"2\n\nC 0 0 0\nH 1.1 abc 0\n", r"\[frame 0\] \(from line 1\): not a valid extxyz frame "
                                                        r"\(could not convert string to float: 'abc'\)"),
    "unknown_element.xyz": (b"2\n\nC 0 0 0\nQx 1.1 0 0\n", r"\[frame 0\] \(from line 1\): unknown element symbol "
                                                           r"'Qx'"),
    "truncated.xyz": (b"1\n\nC 0 0 0\n3\n\nC 0.000000 0.000000 0.000000\nH 1.100000 0.000000 0.000000\n",
                      r"\[frame 1\]: line 4 gives 3 atoms, but the file ends after 2 of them: a truncated file"),
    "one_too_many.xyz": (b"1\n\nC 0 0 0\nH 1.1 0 0\n1\n\nC 0 0 0\n", r"\[frame 1\]: line 4 should give the frame's "
                                                                      r"number of atoms, but reads 'H 1.1 0 0'"),
    "blank_between.xyz": (b"1\n\nC 0 0 0\n\n1\n\nC 0 0 0\n", r": line 4 is blank, but frames follow it"),
}


@pytest.mark.parametrize("reader", ["read_ase", "predict", "label"])
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_structure_files_get_one_line_naming_file_and_frame(tmp_path, name, reader):
    from hessdistill.data.structures import InvalidStructureError

    content, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidStructureError, match="^" + re.escape(str(path)) + message) as err:
        structure_readers(tmp_path)[reader](path)
    assert "\n" not in str(err.value)


def test_bounded_reading_keeps_every_frame_and_ase_index_selection(tmp_path, rng):
    """What the xyz splitter hands ASE is what ASE reads from the file itself: labels, lattice (VEC lines of
    extxyz), info; ASE index strings select the same frames."""
    import ase.io
    from ase.build import bulk, molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    from hessdistill.data.sources.ase_files import read_frames

    frames = [molecule("CH3OH"), bulk("Si", "diamond", a=5.43), molecule("H2O")]
    for k, atoms in enumerate(frames):
        atoms.info["tag"] = k
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - k, forces=rng.normal(size=(len(atoms), 3)))
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames)
    plain = tmp_path / "plain.xyz"
    plain.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n2\nVEC1 3.0 0 0\nC 0 0 0\nO 1.13 0 0\n")
    for file in (path, plain):
        for index in (":", "1:", "::2", "-1", "1", "-2:"):
            got = [a for _, a in read_frames(file, index)]
            want = ase.io.read(file, index=index)
            want = want if isinstance(want, list) else [want]
            assert [a.get_chemical_formula() for a in got] == [a.get_chemical_formula() for a in want]
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a.positions, b.positions)
                np.testing.assert_array_equal(a.cell.array, b.cell.array)
                assert a.info == b.info
                if b.calc is not None:
                    assert a.get_potential_energy() == b.get_potential_energy()
                    np.testing.assert_array_equal(a.get_forces(), b.get_forces())
    assert [k for k, _ in read_frames(path, "::2")] == [0, 2]


# ---- npz: never unpickled ---------------------------------------------------------------------------------------
class LeavesMarker:
    """Unpickling this runs ``Path.touch(marker)``: code from the data file."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_npz_object_arrays_and_pickles_are_refused_unread(tmp_path):
    import pickle

    from hessdistill.data.sources.npz import read_npz
    from hessdistill.data.structures import InvalidStructureError

    marker = tmp_path / "marker"
    objects = tmp_path / "objects.npz"
    np.savez(objects, z=np.array([6, 8]), R=np.array([[LeavesMarker(marker)]], dtype=object),
             E=np.zeros(1), F=np.zeros((1, 2, 3)))
    with pytest.raises(InvalidStructureError, match=rf"^{re.escape(str(objects))}: array 'R' holds Python objects "
                                                    r"\(an object array, which would need unpickling"):
        read_npz(objects)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps(LeavesMarker(marker)))
    with pytest.raises(InvalidStructureError, match=rf"^{re.escape(str(pickled))}: not an npz archive of numeric "
                                                    r"arrays: a pickle, which is never loaded"):
        read_npz(pickled)
    assert not marker.exists()
    text = tmp_path / "text.npz"
    np.savez(text, z=np.array(["C", "O"]), R=np.zeros((1, 2, 3)), E=np.zeros(1), F=np.zeros((1, 2, 3)))
    with pytest.raises(InvalidStructureError, match=r"text.npz: array 'z' has dtype <U1, not numbers"):
        read_npz(text)


# ---- settings that cannot work --------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("rows=0", "loss term 'hessian' compares Hessian rows but samples rows=0 per structure: set rows to 1 or more "
               "(e.g. rows=4), or switch the term off (weights.hessian=0, or distill=undistilled)"),
    ("subset.batch_size=0", "subset.batch_size=0: expected an integer ≥ 1 (structures per batch), e.g. "
                            "subset.batch_size=8"),
    ("subset.eval_batch_size=0", "subset.eval_batch_size=0: expected an integer ≥ 1"),
    ("datamodule.batch_size=-2", "datamodule.batch_size=-2: expected an integer ≥ 1"),
])
def test_settings_that_cannot_train_are_refused_naming_the_key(tmp_path, labelled_store, override, message,
                                                                 monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["experiment=demo", "distill=hessian", f"subset.store={labelled_store}", override,
                                   f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_rows_zero_is_fine_when_the_hessian_term_is_off():
    import hydra

    from conftest import distill_terms
    from hessdistill.training.terms import Loss

    loss = Loss({name: hydra.utils.instantiate(t) for name, t in distill_terms("hessian", rows=0, hessian=0).items()})
    assert loss.rows == 0 and "force_jacobian_rows" not in loss.predictions


# ---- memory: estimated before the work, refused beyond the machine, warned above a threshold -------------------
def carbon_block(n: int, spacing: float = 2.15):
    """n carbon atoms on a simple-cubic lattice of ``spacing`` Å (0.1 atoms/Å³, an organic solid's density)."""
    from hessdistill.data.structures import Structure

    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * spacing
    return Structure(z=np.full(n, 6), positions=grid.astype(float), source=f"{n}-atom block")


def test_a_20000_atom_structure_is_refused_before_prediction_allocates(tmp_path):
    """The shipped PaiNN (12 Å cutoff) on 20,000 atoms would need terabytes: refused in one line, from the estimate,
    with nothing written (the kernel's OOM killer gave no message)."""
    import hydra

    from hessdistill.hessian.footprint import MemoryEstimateError
    from hessdistill.integrations.predict import predict_file

    student = hydra.utils.instantiate(compose_config("train", ["student=painn"]).student).float()
    path, out = tmp_path / "big.xyz", tmp_path / "out.xyz"
    carbon_block(20_000).to_atoms().write(path)
    message = (rf"^predicting {re.escape(str(path))}\[frame 0\] \(20000 atoms, \d+ neighbour pairs within 12.0 Å\) "
               r"needs about [\d.e+]+ GiB of cpu memory at its peak, more than the [\d.]+ GiB available: predict it "
               r"on a device with more memory, or leave it out, or memory_check=false to run it anyway$")
    with pytest.raises(MemoryEstimateError, match=message):
        predict_file(student, path, out)
    assert not out.exists()


def test_a_batch_too_large_for_memory_names_batch_size_and_a_large_prediction_warns(tmp_path, monkeypatch, caplog):
    import ase.io
    import torch

    from conftest import tiny_painn
    from hessdistill.hessian.footprint import MemoryEstimateError
    from hessdistill.integrations.predict import predict_file

    student = tiny_painn("direct", dtype=torch.float32)
    path = tmp_path / "frames.xyz"
    ase.io.write(path, [carbon_block(60, 1.5).to_atoms() for _ in range(8)])
    predict_file(student, path, tmp_path / "out.xyz", memory_warn_gib=1e-4)  # ~ tens of MB: warned, then done
    assert f"predicting {path}[frame 0] (60 atoms" in caplog.text and "memory_warn_gib=0.0001" in caplog.text
    assert len(ase.io.read(tmp_path / "out.xyz", ":")) == 8
    one_frame = [line for line in caplog.text.splitlines() if "predicting frames 0–7" in line][0]
    needed = float(re.search(r"needs about ([\d.e+-]+) GiB", one_frame).group(1)) * 2**30
    monkeypatch.setattr("hessdistill.hessian.footprint.free_memory", lambda device: needed / 2)
    with pytest.raises(MemoryEstimateError, match=r"predicting frames 0–7 in one batch \(480 atoms\) needs about .* "
                                                  r"lower batch_size \(now 64\), or memory_check=false"):
        predict_file(student, path, tmp_path / "out2.xyz")
    predict_file(student, path, tmp_path / "out2.xyz", batch_size=2)  # a quarter of the memory: fits


def test_the_teacher_step_refuses_20000_atoms_before_the_teacher_loads_and_warns_at_5000(tmp_path, monkeypatch,
                                                                                          caplog):
    """Full Hessians are (3N)² float64 each (20,000 atoms: 29 GB per copy, four copies at the peak); the check runs
    on a machine said to have 32 GiB available, whatever this one has."""
    from dataclasses import replace

    from conftest import precompute_config
    from hessdistill.cli.precompute import run
    from hessdistill.data.store import HessianStore, write_structures
    from hessdistill.hessian.footprint import MemoryEstimateError, check_teacher_hessians

    monkeypatch.setattr("hessdistill.hessian.footprint.free_memory", lambda device: 32 * 2**30)
    store = tmp_path / "big.h5"
    write_structures(store, [replace(s, energy=0.0, forces=np.zeros((s.n_atoms, 3)))
                             for s in (carbon_block(12), carbon_block(20_000))])
    monkeypatch.setattr("hessdistill.teachers.ani.ANITeacher.__init__", lambda *a, **k: pytest.fail("teacher built"))
    with pytest.raises(MemoryEstimateError, match=rf"^the teacher step on {re.escape(str(store))}\[1\] \(20000 atoms, "
                                                  r"a 60000×60000 Hessian\) needs about 107 GiB of cpu memory at its "
                                                  r"peak, more than the 32 GiB available: store sampled rows instead "
                                                  r"of full Hessians \(storage.layout=rows storage.rows=<k>\)"):
        run(precompute_config(store))
    with HessianStore(store) as s:
        assert "teachers" not in s.file or len(s.file["teachers"]) == 0
    check_teacher_hessians(np.array([12, 5000]), None, None, "s.h5", warn_gib=4.0)
    assert "the teacher step on s.h5[1] (5000 atoms, a 15000×15000 Hessian) needs about 6.71 GiB" in caplog.text
    check_teacher_hessians(np.array([12, 20_000]), None, 16, "s.h5", warn_gib=4.0)  # 16 rows: a few MB


def test_a_training_step_too_large_for_memory_is_refused_naming_batch_size_and_rows(tmp_path, labelled_store,
                                                                                     monkeypatch):
    from hessdistill.cli.train import run
    from hessdistill.hessian.footprint import MemoryEstimateError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hessdistill.hessian.footprint.free_memory", lambda device: 2**20)
    cfg = compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", "student.hidden_channels=16",
                                   "student.num_layers=2", f"logger.0.save_dir={tmp_path}"])
    with pytest.raises(MemoryEstimateError, match=r"^a training step on the 8 largest structures of the train split "
                                                  r"\(\d+ atoms, \d+ neighbour pairs within 5.0 Å; the largest .*\) "
                                                  r"needs about .* more than the 0.000977 GiB available: lower "
                                                  r"subset.batch_size \(now 8\) or rows \(now 4\), or "
                                                  r"memory_check=false"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
