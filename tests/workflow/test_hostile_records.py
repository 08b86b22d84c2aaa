"""Hostile records, batches and inputs (issue #17): each gets one clear error line naming the file, frame or key and
the likely cause, and leaves every existing file as it was.

Records: atoms closer than 0.5 Å, singular or thin periodic cells, non-finite positions, labels or unit factors.
Batching: periodic structures in ANI batches, batches of similar sizes only, progress within a large structure, a
warning when the memory budget holds one lane. Errors in our words: unreadable or mismatched checkpoints (never torch's
advice to load with ``weights_only=False``), unknown split names, non-numeric λ. And the bad inputs that already had
clear errors, kept that way.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import zipfile

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from hydra.errors import MissingConfigException

from conftest import WrappedTeacher, compose_config, label_with, make_batch, rattled
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.data.structures import InvalidStructureError, Structure
from hessdistill.data.subset import build_store
from hessdistill.evaluation.checkpoint import CheckpointError, load_student
from hessdistill.hessian.memory import MemoryBudget
from hessdistill.teacher_step.batch_size import similar_sized
from hessdistill.teacher_step.run import precompute_teacher


def digests(*paths) -> dict:
    """SHA-256 of each file's bytes: equal before and after means the file was not changed."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def labelled(atoms: Atoms, energy: float = -10.0, forces: np.ndarray | None = None) -> Atoms:
    atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                       forces=np.zeros((len(atoms), 3)) if forces is None else forces)
    return atoms


# ---- records: geometry, non-finite values, unit factors --------------------------------------------------------
def close_atoms():
    atoms = molecule("H2O")
    atoms.positions[1] = atoms.positions[0] + [0.3, 0.0, 0.0]
    return labelled(atoms)


def duplicated_atom():
    atoms = molecule("CH4")
    atoms.positions[3] = atoms.positions[2]
    return labelled(atoms)


def close_across_the_cell_boundary():
    return labelled(Atoms("HH", positions=[[0.1, 2.0, 2.0], [4.8, 2.0, 2.0]], cell=[5.0, 5.0, 5.0], pbc=True))


def singular_cell():
    atoms = molecule("H2O", cell=[[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [6.0, 6.0, 0.0]], pbc=True)
    return labelled(atoms)


def thin_cell():
    return labelled(Atoms("H", positions=[[0.0, 0.0, 0.0]], cell=[4.0, 4.0, 0.3], pbc=True))


def nan_position():
    atoms = molecule("H2O")
    atoms.positions[2, 1] = np.nan
    return labelled(atoms)


def nan_energy():
    return labelled(molecule("H2O"), energy=np.nan)


def inf_forces():
    return labelled(molecule("H2O"), forces=np.full((3, 3), np.inf))


@pytest.mark.parametrize("bad, message", [
    (close_atoms, r"atoms 0 and 1 are 0.3 Å apart \(< 0.5 Å\): a duplicated atom, or positions not in Å \(check "
                  r"the source's length_unit\)"),
    (duplicated_atom, r"atoms 2 and 3 are 0 Å apart"),
    (close_across_the_cell_boundary, r"atoms 0 and 1 are 0.3 Å apart"),
    (singular_cell, r"periodic cell is singular or too thin: its lattice planes along cell vector 1 are 0 Å apart "
                    r"\(\|det\| = 0 Å³\); check the cell"),
    (thin_cell, r"periodic cell is singular or too thin: its lattice planes along cell vector 3 are 0.3 Å apart "
                r"\(\|det\| = 4.8 Å³\)"),
    (nan_position, r"positions contain NaN or inf"),
    (nan_energy, r"energy is nan"),
    (inf_forces, r"forces contain NaN or inf"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_bad_frames_are_refused_naming_file_and_frame(tmp_path, bad, message):
    source, store = tmp_path / "frames.extxyz", tmp_path / "store.h5"
    ase.io.write(source, [labelled(rattled("H2O", seed=k)) for k in range(2)] + [bad()])
    before = digests(source)
    cfg = compose_config("precompute", [f"subset.source.path={source}", f"subset.store={store}"])
    with pytest.raises(InvalidStructureError, match=re.escape(f"{source}[frame 2]: ") + message):
        build_store(cfg.subset)
    assert digests(source) == before and not store.exists()


def test_a_non_finite_cell_is_refused():
    s = Structure(z=[1], positions=[[0.0, 0.0, 0.0]], cell=np.diag([4.0, np.nan, 4.0]), pbc=[True] * 3,
                  source="cells.json[7]")
    with pytest.raises(InvalidStructureError, match=re.escape("cells.json[7]: cell contains NaN or inf")):
        s.validate(require_labels=False)


def test_geometry_checks_accept_real_structures():
    crystals = [bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.64).repeat(2)]
    slab = Atoms("HH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]], cell=[3.0, 3.0, 0.0], pbc=[True, True, False])
    for atoms in [molecule("H2"), molecule("C60"), *crystals, slab]:  # H–H 0.74 Å: the shortest real bond
        Structure.from_atoms(atoms).validate(require_labels=False)


@pytest.mark.parametrize("seed", range(6))
def test_closest_pair_agrees_with_ase_neighbour_lists_in_skewed_cells(seed):
    from ase.neighborlist import neighbor_list

    from hessdistill.data.geometry import closest_pair, periodic_widths

    rng = np.random.default_rng(seed)
    pbc = [[True] * 3, [True] * 3, [True, True, False], [True, False, True]][seed % 4]
    cell = np.diag(rng.uniform(4.0, 6.0, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
    atoms = Atoms("H12", positions=rng.uniform(-6.0, 6.0, (12, 3)), cell=cell, pbc=pbc)  # atoms outside the cell too
    cutoff = 1.0
    assert (periodic_widths(cell, atoms.pbc) >= cutoff).all()
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    found = closest_pair(atoms.positions, cell, atoms.pbc, cutoff)
    if len(d) == 0:
        assert found is None
    else:
        k = np.argmin(d)
        assert found == (min(i[k], j[k]), max(i[k], j[k]), pytest.approx(d[k], abs=1e-12))


@pytest.mark.parametrize("override, message", [
    ("energy_unit=0", r"energy_unit=0 is not a finite positive factor \(eV per energy unit of the file, e.g. "
                      r"0.0433641 for kcal/mol\)"),
    ("energy_unit=-1.0", r"energy_unit=-1.0 is not a finite positive factor"),
    ("energy_unit=kcal/mol", r"energy_unit='kcal/mol' is not a finite positive factor"),
    ("length_unit=nan", r"length_unit=nan is not a finite positive factor \(Å per length unit of the file, e.g. "
                        r"0.529177 for Bohr\)"),
    ("length_unit=inf", r"length_unit=inf is not a finite positive factor"),
])
def test_bad_unit_factors_of_a_subset_are_refused_naming_the_file(tmp_path, override, message):
    source, store = tmp_path / "frames.extxyz", tmp_path / "store.h5"
    ase.io.write(source, [labelled(rattled("H2O"))])
    before = digests(source)
    cfg = compose_config("precompute", [f"subset.source.path={source}", f"subset.store={store}",
                                        f"subset.source.{override}"])
    with pytest.raises(InvalidStructureError, match=re.escape(f"{source}: ") + message):
        build_store(cfg.subset)
    assert digests(source) == before and not store.exists()


def test_bad_unit_factors_of_the_hdf5_and_npz_readers_are_refused(tmp_path):
    from hessdistill.data.sources.ani_hdf5 import read_ani_hdf5
    from hessdistill.data.sources.npz import read_npz

    npz, h5 = tmp_path / "md.npz", tmp_path / "ani.h5"
    np.savez(npz, z=[8, 1, 1], R=molecule("H2O").positions[None], E=[1.0], F=np.zeros((1, 3, 3)))
    h5.write_bytes(b"")
    with pytest.raises(InvalidStructureError, match=re.escape(f"{npz}: energy_unit=0.0 is not a finite positive")):
        read_npz(npz, energy_unit=0.0)
    with pytest.raises(InvalidStructureError, match=re.escape(f"{h5}: length_unit=-0.5 is not a finite positive")):
        read_ani_hdf5(h5, length_unit=-0.5)


# ---- batching: periodic structures, similar sizes, progress, one-lane budgets ----------------------------------
class RecordingTeacher(WrappedTeacher):
    """A teacher that records the atom counts and periodicity of every batch it computes."""

    def __init__(self, teacher) -> None:
        super().__init__(teacher)
        self.batches = []

    def hessians(self, batch, chunk_size=None, strategy="auto"):
        self.batches.append(((batch.ptr[1:] - batch.ptr[:-1]).tolist(), batch.pbc.any(dim=1).tolist()))
        return self.inner.hessians(batch, chunk_size, strategy)


def precomputed(path, structures, teacher, **options) -> list[np.ndarray]:
    write_structures(path, structures)
    with HessianStore(path, "a") as store:
        precompute_teacher(store, teacher, progress=False, **options)
    with HessianStore(path) as store:
        return [store.hessian("ani1x", i) for i in range(len(store))]


def test_periodic_structures_batch_with_an_ani_teacher(tmp_path, ani_teacher):
    diamond = bulk("C", "diamond", a=3.57).repeat((2, 1, 1))
    diamond.rattle(0.05, seed=1)
    water = rattled("H2O")
    water.set_cell([3.2, 3.2, 3.2])
    water.pbc = True
    water.center()
    structures = label_with(ani_teacher, [water, diamond, rattled("NH3"), rattled("H2O", seed=2)])
    recording = RecordingTeacher(ani_teacher)
    batched = precomputed(tmp_path / "batched.h5", structures, recording, batch_size=4)
    single = precomputed(tmp_path / "single.h5", structures, ani_teacher, batch_size=1)
    assert any(sum(periodic) == 2 and len(periodic) >= 3 for _, periodic in recording.batches)
    for h, ref in zip(batched, single):
        np.testing.assert_allclose(h, ref, atol=1e-5)


def test_similar_sized_cuts_a_batch_before_a_much_larger_structure():
    assert similar_sized(np.array([9, 10, 11, 12, 198])) == 4  # the 594-lane batch
    assert similar_sized(np.array([198, 199, 297])) == 3 and similar_sized(np.array([198, 298])) == 1
    assert similar_sized(np.array([3, 4, 6]), ratio=2.0) == 3


def test_precompute_batches_only_similar_sizes_and_resumes_to_the_same_hessians(tmp_path, ani_teacher):
    names = ["H2O", "CH4", "CH3OH", "CH3CH2OH", "C6H6"]  # 3, 5, 6, 9, 12 atoms
    structures = label_with(ani_teacher, [rattled(n, seed=k) for k, n in enumerate(names * 2)])
    recording = RecordingTeacher(ani_teacher)
    batched = precomputed(tmp_path / "batched.h5", structures, recording, batch_size=8)
    assert sorted(sizes for sizes, _ in recording.batches) == [[3, 3], [5, 5, 6, 6], [9, 9, 12, 12]]
    single = precomputed(tmp_path / "single.h5", structures, ani_teacher, batch_size=1)
    write_structures(tmp_path / "resumed.h5", structures)
    with HessianStore(tmp_path / "resumed.h5", "a") as store:  # a run stopped half-way, then resumed
        precompute_teacher(store, ani_teacher, batch_size=8, progress=False, indices=np.arange(0, 10, 2))
        assert precompute_teacher(store, ani_teacher, batch_size=8, progress=False)["computed"] == 5
        resumed = [store.hessian("ani1x", i) for i in range(len(store))]
    for h, r, ref in zip(batched, resumed, single):
        np.testing.assert_allclose(h, ref, atol=1e-5)
        np.testing.assert_allclose(r, ref, atol=1e-5)


def test_a_long_hessian_call_logs_its_progress_through_the_lanes(ani_teacher, monkeypatch, caplog):
    from hessdistill.hessian import full

    monkeypatch.setattr(full, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="hessdistill.hessian.full"):
        ani_teacher.hessians(make_batch([rattled("CH3OH")]), chunk_size=5)
    done = [re.match(r"Hessian lanes (\d+)/18 done after \d+ s \(1 structure\(s\) of up to 6 atoms, chunks of 5 "
                     r"lanes\)", r.getMessage()) for r in caplog.records]
    assert all(done) and [int(m.group(1)) for m in done] == [5, 10, 15]


def test_a_budget_of_less_than_one_lane_warns_once_and_still_computes(ani_teacher, caplog):
    batch = make_batch([rattled("CH3OH")])
    with caplog.at_level(logging.WARNING, logger="hessdistill.hessian.memory"):
        out = ani_teacher.hessians(batch, MemoryBudget(gib=1e-9))
    assert out.chunk_sizes == [1] * 18
    (warning,) = caplog.records
    assert re.match(r"memory budget of 1e-09 GiB holds less than one Hessian lane \(about [\d.e+-]+ GiB each\): "
                    r"computing one lane per chunk, 18 passes for this call; raise memory_budget_gib",
                    warning.getMessage())
    torch.testing.assert_close(out.hessians[0], ani_teacher.hessians(batch).hessians[0], atol=1e-10, rtol=0)


# ---- errors in our words: checkpoints, split names, λ ----------------------------------------------------------
TINY = ["student.hidden_channels=16", "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]


class Payload:
    """A class a hostile checkpoint names (loading it would need ``weights_only=False``)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, labelled_store):
    """A tiny PaiNN trained for one epoch: its run directory and the overrides that rebuild its config."""
    from hessdistill.cli.train import run

    out = tmp_path_factory.mktemp("trained")
    common = ["experiment=demo", f"subset.store={labelled_store}", "subset.split=[0.5,0.25,0.25]",
              "subset.batch_size=4", f"logger.0.save_dir={out}", "test=false"]
    run(compose_config("train", [*common, "trainer.max_epochs=1", *TINY]), str(out / "run"))
    return out / "run", common


def garbage_checkpoints(tmp_path) -> dict:
    """Unreadable checkpoint files, by kind."""
    files = {kind: tmp_path / f"{kind}.ckpt" for kind in ("random", "empty", "object", "zip", "foreign", "list")}
    files["random"].write_bytes(random.Random(0).randbytes(4096))
    files["empty"].write_bytes(b"")
    torch.save({"hyper_parameters": {"student": {}}, "state_dict": {}, "extra": Payload()}, files["object"])
    with zipfile.ZipFile(files["zip"], "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    torch.save({"state_dict": {}}, files["foreign"])
    torch.save([{"hyper_parameters": {"student": {}}}], files["list"])
    return files


@pytest.mark.parametrize("kind, cause", [
    ("random", "its bytes are not a PyTorch checkpoint (another kind of file, or a corrupted one)"),
    ("empty", "the file is empty or ends early (an interrupted copy or write?)"),
    ("object", "it holds a Python object ("),
    ("zip", "its bytes are not a PyTorch checkpoint"),
    ("foreign", "a PyTorch file without the hyper_parameters.student config and state_dict that hessdistill-train "
                "writes"),
    ("list", "a PyTorch file without the hyper_parameters.student config"),
])
def test_unreadable_checkpoints_get_one_line_in_our_words(tmp_path, kind, cause):
    path = garbage_checkpoints(tmp_path)[kind]
    before = digests(path)
    with pytest.raises(CheckpointError) as error:
        load_student(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a hessdistill training checkpoint: {cause}")
    assert "\n" not in message and "weights_only" not in message
    if kind == "object":
        assert re.search(r"\(\S*Payload\) besides tensors and plain containers; checkpoints are read as weights "
                         r"only, and no code a file names is run", message)
    assert digests(path) == before


@pytest.mark.parametrize("command", ["evaluate", "predict", "train"])
def test_every_command_refuses_a_garbage_checkpoint_in_our_words(tmp_path, trained, command, monkeypatch):
    from hessdistill.cli import evaluate, predict, train

    monkeypatch.chdir(tmp_path)
    path = garbage_checkpoints(tmp_path)["random"]
    ase.io.write(tmp_path / "in.xyz", [rattled("H2O")])
    before = digests(path, tmp_path / "in.xyz")
    _, common = trained
    calls = {
        "evaluate": lambda: evaluate.run(compose_config("evaluate", [f"checkpoint={path}", common[1]]),
                                         str(tmp_path / "eval")),
        "predict": lambda: predict.run(compose_config("predict", [f"checkpoint={path}", f"input={tmp_path}/in.xyz",
                                                                  f"output={tmp_path}/out.xyz"])),
        "train": lambda: train.run(compose_config("train", [*common, *TINY, f"ckpt_path={path}"]),
                                   str(tmp_path / "resumed")),
    }
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a hessdistill training checkpoint: "
                                                                      "its bytes are not a PyTorch checkpoint"):
        calls[command]()
    assert digests(path, tmp_path / "in.xyz") == before and not (tmp_path / "out.xyz").exists()


@pytest.mark.parametrize("student, message", [
    (["student=schnet", "student.hidden_channels=16", "student.num_filters=16", "student.num_interactions=2",
      "student.num_rbf=8"], r"was trained with student PaiNN, this run's config builds SchNet: resume with the "
                            r"student settings it was trained with \(its run directory's config.yaml\), or drop "
                            r"ckpt_path to start anew"),
    (["student.hidden_channels=32", *TINY[1:]], r"was trained with student PaiNN\(hidden_channels=16\), this run's "
                                                r"config builds PaiNN\(hidden_channels=32\)"),
])
def test_resuming_another_students_checkpoint_is_refused(tmp_path, trained, student, message, monkeypatch):
    from hessdistill.cli.train import run

    monkeypatch.chdir(tmp_path)
    run_dir, common = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    before = digests(checkpoint)
    with pytest.raises(CheckpointError, match=re.escape(f"ckpt_path={checkpoint} ") + message):
        run(compose_config("train", [*common, *student, f"ckpt_path={checkpoint}"]), str(tmp_path / "resumed"))
    assert digests(checkpoint) == before and not (tmp_path / "resumed" / "checkpoints").exists()


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path, trained, monkeypatch):
    from hessdistill.cli.evaluate import run as evaluate
    from hessdistill.cli.train import run as train

    monkeypatch.chdir(tmp_path)
    run_dir, common = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    dropped = "student.representation.embedding.weight"
    del checkpoint["state_dict"][dropped]
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    before = digests(edited)
    with pytest.raises(CheckpointError, match=re.escape(f"ckpt_path={edited}: its weights do not fit this run's "
                                                        f"student and loss terms (missing {dropped}): resume with "
                                                        f"the distill config it was trained with")):
        train(compose_config("train", [*common, *TINY, f"ckpt_path={edited}"]), str(tmp_path / "resumed"))
    with pytest.raises(CheckpointError, match=re.escape(f"{edited}: its weights do not fit the student its own "
                                                        f"config builds (missing {dropped.removeprefix('student.')})"
                                                        f": the file was edited or assembled from two runs")):
        evaluate(compose_config("evaluate", [f"checkpoint={edited}", common[1]]), str(tmp_path / "eval"))
    assert digests(edited) == before


def test_an_unknown_split_name_is_refused_before_any_work(tmp_path, trained):
    from hessdistill.cli.evaluate import run

    run_dir, _ = trained
    with pytest.raises(ValueError, match=r"^split='tset' is not a split name; choose one of train, val, test$"):
        run(compose_config("evaluate", [f"run={run_dir}", "split=tset"]), str(tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("override, message", [
    ("weights.hessian=abc", "weights.hessian='abc': expected a finite number ≥ 0 (a loss weight λ), e.g. "
                            "weights.hessian=100"),
    ("weights.forces=-1", "weights.forces=-1: expected a finite number ≥ 0 (a loss weight λ)"),
    ("weights.energy=nan", "weights.energy=nan: expected a finite number ≥ 0"),
    ("rows=abc", "rows='abc': expected an integer ≥ 0 (Hessian rows per structure), e.g. rows=4"),
    ("rows=1.5", "rows=1.5: expected an integer ≥ 0"),
])
def test_non_numeric_loss_weights_and_rows_are_refused_naming_the_key(tmp_path, labelled_store, override, message):
    from hessdistill.cli.train import run

    cfg = compose_config("train", ["experiment=demo", f"subset.store={labelled_store}", override])
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ---- inputs that already had clear errors, kept that way --------------------------------------------------------
def already_clear_cases(tmp_path, trained):
    """(call, exception type, message pattern) for each bad input the commands already answered clearly."""
    from hessdistill.cli.evaluate import run as evaluate
    from hessdistill.cli.predict import run as predict
    from hessdistill.cli.train import run as train
    from hessdistill.data.sources.ani_hdf5 import read_ani_hdf5
    from hessdistill.data.sources.ase_files import read_ase
    from hessdistill.data.sources.mptrj import read_mptrj
    from hessdistill.data.sources.npz import read_npz
    from hessdistill.data.sources.spice_hdf5 import read_spice
    from hessdistill.teachers.ani import ANITeacher
    from hessdistill.teachers.finite_difference import FiniteDifferenceTeacher
    from hessdistill.training.terms import LossTerm

    missing, text = tmp_path / "missing.xyz", tmp_path / "notes.txt"
    text.write_text("not a structure file\n")
    run_dir, common = trained
    return {
        "structure file missing": (lambda: read_ase(missing), FileNotFoundError, r"structure file not found: .*ing"),
        "structure file unreadable": (lambda: list(read_ase(text, format="xyz")), InvalidStructureError,
                                      r"notes.txt: cannot be read by ASE"),
        "npz missing": (lambda: read_npz(tmp_path / "md.npz"), FileNotFoundError, r"npz file not found: .*md.npz"),
        "spice missing": (lambda: read_spice(tmp_path / "s.h5"), FileNotFoundError, r"SPICE file not found: .*s.h5"),
        "ani hdf5 missing": (lambda: read_ani_hdf5(tmp_path / "a.h5"), FileNotFoundError,
                             r"ANI HDF5 file not found: .*a.h5"),
        "mptrj missing": (lambda: read_mptrj(tmp_path / "m.json"), FileNotFoundError, r"MPtrj file not found"),
        "spice not hdf5": (lambda: read_spice(text), InvalidStructureError, r"notes.txt: cannot be opened as HDF5"),
        "mptrj not json": (lambda: list(read_mptrj(text)), InvalidStructureError, r"notes.txt: not valid JSON"),
        "unknown teacher": (lambda: compose_config("train", ["teacher=ani3x"]), MissingConfigException,
                            r"Could not find 'teacher/ani3x'\n\nAvailable options in 'teacher':"),
        "unknown student": (lambda: compose_config("train", ["student=painnn"]), MissingConfigException,
                            r"Could not find 'student/painnn'"),
        "unknown subset": (lambda: compose_config("precompute", ["subset=spice"]), MissingConfigException,
                           r"Could not find 'subset/spice'"),
        "checkpoint missing": (lambda: load_student(tmp_path / "last.ckpt"), FileNotFoundError,
                               r"checkpoint not found: .*last.ckpt"),
        "evaluate run not a run": (lambda: evaluate(compose_config("evaluate", [f"run={tmp_path}"]), str(tmp_path)),
                                   FileNotFoundError, r"not a training run directory \(no config.yaml\)"),
        "predict input missing": (lambda: predict(compose_config("predict", [
            f"checkpoint={run_dir}/checkpoints/last.ckpt", f"input={missing}", f"output={tmp_path}/out.xyz"])),
            FileNotFoundError, r"structure file not found: .*missing.xyz"),
        "teacher mode unknown": (lambda: train(compose_config("train", [*common, *TINY, "teacher_mode=live"]),
                                               str(tmp_path / "run")), ValueError,
                                 r"teacher_mode must be one of \('precomputed', 'online'\), got 'live'"),
        "ani model unknown": (lambda: ANITeacher("ani3x"), ValueError,
                              r"unknown ANI model 'ani3x'; choose one of ani1x, ani1ccx, ani2x or pass info_file="),
        "ani info file missing": (lambda: ANITeacher(info_file=str(tmp_path / "x.info")), FileNotFoundError,
                                  r"ANI info file not found: .*x.info"),
        "finite-difference step": (lambda: FiniteDifferenceTeacher(delta=0.0), ValueError,
                                   r"finite-difference step must be positive, got delta=0.0"),
        "structure without atoms": (lambda: Structure(z=[], positions=np.zeros((0, 3)), source="f.xyz[3]").validate(),
                                    InvalidStructureError, r"f.xyz\[3\]: structure has no atoms"),
        "unknown prediction": (lambda: LossTerm("force_loss", "hessian", "teacher_forces"), ValueError,
                               r"unknown prediction 'hessian'; choose one of"),
    }


CASES = ["structure file missing", "structure file unreadable", "npz missing", "spice missing", "ani hdf5 missing",
         "mptrj missing", "spice not hdf5", "mptrj not json", "unknown teacher", "unknown student", "unknown subset",
         "checkpoint missing", "evaluate run not a run", "predict input missing", "teacher mode unknown",
         "ani model unknown", "ani info file missing", "finite-difference step", "structure without atoms",
         "unknown prediction"]


@pytest.mark.parametrize("case", CASES)
def test_inputs_that_already_had_clear_errors_keep_them(tmp_path, trained, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = already_clear_cases(tmp_path, trained)
    assert sorted(cases) == sorted(CASES)
    call, error, pattern = cases[case]
    existing = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = digests(*existing)
    with pytest.raises(error, match=pattern):
        call()
    assert digests(*existing) == before
