"""Stores are data that stays inside its file and is what was written (issue #25): links out of the file, virtual
datasets and external raw storage are refused by name when the store is opened (main, added and shard stores, and
through a training run); a label dataset changed after it was written (a flipped bit, scaled energies, moved
positions, in a store or an augmentation store) is refused by its content digest; non-finite labels marked done are
refused where they are used; two precomputes of different teachers on one store with HDF5 file locking off both
keep their labels; a full disk during label writes and a read-only store get one line each."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import compose_config, precompute_config, rattled
from hessdistill.data import store_digests, store_files
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import Structure
from hessdistill.teacher_step.shards import merge_shards, open_shard, shard_indices

OUTSIDE = "a store holds all its data itself and never reads outside its file"
MARKER = 12345.0  # the attacker's file's teacher energies: a run that read them would train on them
TINY = ["experiment=demo", "trainer.max_epochs=1", "subset.batch_size=8", "student.hidden_channels=16",
        "student.num_layers=2", "student.num_rbf=8", "student.cutoff=4.0"]


MOLECULES = ("H2O", "NH3", "CH4", "CH3OH", "HCOOH", "CH3CH2OH")


def random_structures(names=MOLECULES) -> list[Structure]:
    """Rattled molecules with random reference labels (eV, eV/Å)."""
    rng, structures = np.random.default_rng(0), []
    for k, name in enumerate(names):
        s = Structure.from_atoms(rattled(name, seed=k), source=f"made[{k}]")
        s.energy, s.forces = float(rng.normal(-100.0, 5.0)), rng.normal(size=(s.n_atoms, 3))
        structures.append(s)
    return structures


def random_store(path, names=MOLECULES, teacher: str | None = "first"):
    """A store of ``random_structures`` and (``teacher``) complete random teacher labels, whose last write seals the
    teacher's content digest."""
    rng = np.random.default_rng(1)
    write_structures(path, random_structures(names))
    if teacher is not None:
        with HessianStore(path, mode="a") as store:
            store.create_teacher(teacher, {"teacher": teacher})
            for i in range(len(store)):
                n = store.n_atoms(i)
                store.write_teacher(teacher, i, float(rng.normal()), rng.normal(size=(n, 3)),
                                    rng.normal(size=(3 * n, 3 * n)))
    return path


def train_config(store, tmp_path, *overrides):
    return compose_config("train", [*TINY, f"subset.store={store}", f"logger.0.save_dir={tmp_path / 'logs'}",
                                    *overrides])


# ---- links, virtual datasets and external storage --------------------------------------------------------------
def replace(path, name: str, make) -> None:
    """Replace the object ``name`` of the store at ``path`` by ``make(file, name)``."""
    with h5py.File(path, "a") as f:
        del f[name]
        make(f, name)


def attack(path, kind: str, tmp_path) -> str:
    """Turn the store at ``path`` (teacher "ani1x") into one that reads outside itself; the refusal's words."""
    outside = tmp_path / "outside.h5"  # the attacker's file: the store's labels with marker energies
    shutil.copy(path, outside)
    with h5py.File(outside, "a") as f:
        f["teachers/ani1x/energy"][:] = MARKER
    with h5py.File(path, "r") as f:
        shapes = {name: (f[name].shape, f[name].dtype) for name in
                  ("teachers/ani1x/energy", "teachers/ani1x/forces", "teachers/ani1x/hessian", "structures/positions")}

    def virtual(source, name):
        def make(f, target):
            layout = h5py.VirtualLayout(*shapes[name])
            layout[:] = h5py.VirtualSource(str(source), name, shape=shapes[name][0])
            f.create_virtual_dataset(target, layout, fillvalue=0)
        return make

    def external(name):
        stand_in = tmp_path / "passwd"  # stands for /etc/passwd: any file the attacker names
        shape, dtype = shapes[name]
        nbytes = int(np.prod(shape)) * dtype.itemsize
        stand_in.write_bytes((b"root:x:0:0:root:/root:/bin/bash\n" * (nbytes // 32 + 1))[:nbytes])
        return lambda f, target: f.create_dataset(target, shape, dtype, external=[(str(stand_in), 0, nbytes)])

    if kind == "external link":
        replace(path, "teachers/ani1x", lambda f, name: f.__setitem__(name, h5py.ExternalLink(str(outside),
                                                                                              "/teachers/ani1x")))
        return rf"/teachers/ani1x is an external link to {outside}:/teachers/ani1x"
    if kind == "virtual dataset":
        replace(path, "teachers/ani1x/energy", virtual(outside, "teachers/ani1x/energy"))
        return rf"/teachers/ani1x/energy is a virtual dataset \(its data would come from {outside}\)"
    if kind == "virtual dataset of a missing file":  # read, it gives the fill value 0 for every entry
        replace(path, "teachers/ani1x/hessian", virtual(tmp_path / "gone.h5", "teachers/ani1x/hessian"))
        return rf"/teachers/ani1x/hessian is a virtual dataset \(its data would come from {tmp_path / 'gone.h5'}\)"
    if kind == "external raw storage of labels":
        replace(path, "teachers/ani1x/forces", external("teachers/ani1x/forces"))
        return rf"/teachers/ani1x/forces keeps its data in '{tmp_path / 'passwd'}' \(external raw storage\)"
    assert kind == "external raw storage of structures"
    replace(path, "structures/positions", external("structures/positions"))
    return rf"/structures/positions keeps its data in '{tmp_path / 'passwd'}' \(external raw storage\)"


ATTACKS = ["external link", "virtual dataset", "virtual dataset of a missing file", "external raw storage of labels",
           "external raw storage of structures"]


@pytest.mark.parametrize("kind", ATTACKS)
def test_a_store_reading_outside_its_file_is_refused_on_open_and_by_training(labelled_store, tmp_path, kind):
    from hessdistill.cli.train import run

    path = tmp_path / "store.h5"
    shutil.copy(labelled_store, path)
    words = f"^{re.escape(str(path))}: {attack(path, kind, tmp_path)}; {OUTSIDE}$"
    blob = path.read_bytes()
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=words):
            HessianStore(path, mode=mode)
    with pytest.raises(StoreError, match=words):
        run(train_config(path, tmp_path), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was trained or written
    assert path.read_bytes() == blob


def test_added_and_shard_stores_reading_outside_their_file_are_refused(labelled_store, tmp_path):
    """An on-policy round's or augmentation store joining training, and a shard file being merged: each is opened
    like a store, so each is refused by name."""
    from hessdistill.cli.train import run

    added = tmp_path / "round-1.h5"
    shutil.copy(labelled_store, added)
    words = attack(added, "external link", tmp_path)
    with pytest.raises(StoreError, match=f"^{re.escape(str(added))}: {words}"):
        run(train_config(labelled_store, tmp_path, f"added_stores=[{added}]"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()

    main = tmp_path / "main.h5"
    with HessianStore(labelled_store) as source:
        source.copy_structures(main)
        with HessianStore(main) as store:
            for i in range(2):
                with open_shard(store, "ani1x", i, 2) as shard:
                    shard.copy_teacher_labels(source, "ani1x", shard_indices(len(store), i, 2))
    shard = tmp_path / "main.ani1x.shard-1-of-2.h5"
    words = attack(shard, "virtual dataset", tmp_path)
    with HessianStore(main, mode="a") as store, pytest.raises(StoreError, match=f"^{re.escape(str(shard))}: {words}"):
        merge_shards(store, "ani1x", 2)
    with HessianStore(main) as store:
        assert not store.teachers() or not store.teacher_done("ani1x")[shard_indices(len(store), 1, 2)].any()


def test_hessdistill_train_on_a_linked_store_exits_non_zero_with_one_line(labelled_store, tmp_path):
    path = tmp_path / "store.h5"
    shutil.copy(labelled_store, path)
    words = attack(path, "external link", tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "hessdistill.cli.train", *TINY, f"subset.store={path}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if re.search(words, line)]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), done.stderr  # no traceback either
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "metrics.json").exists()


# ---- content digests -------------------------------------------------------------------------------------------
def flipped(values: np.ndarray, bit: int) -> np.ndarray:
    raw = values.copy().view(np.uint8).reshape(-1)
    raw[bit // 8] ^= 1 << (bit % 8)
    return raw.view(values.dtype).reshape(values.shape)


TAMPERED = {  # dataset, change
    "a bit flipped in a Hessian": ("teachers/first/hessian", lambda h: flipped(h, 8 * 4 * 200 + 3)),
    "teacher energies scaled x10": ("teachers/first/energy", lambda e: 10.0 * e),
    "teacher forces scaled x10": ("teachers/first/forces", lambda f: 10.0 * f),
    "reference energies scaled x10": ("structures/energy", lambda e: 10.0 * e),
    "positions moved": ("structures/positions", lambda p: p + np.where(np.arange(len(p))[:, None] == 4, 0.05, 0.0)),
}


def rewrite(path, name: str, change) -> None:
    with h5py.File(path, "a") as f:
        f[name][...] = change(f[name][()])


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_labels_changed_after_they_were_written_are_refused_by_name(tmp_path, case):
    name, change = TAMPERED[case]
    path = random_store(tmp_path / "s.h5")
    with HessianStore(path) as store:
        assert store.hessian("first", 2).shape == (3 * store.n_atoms(2),) * 2  # sealed and sound before
    rewrite(path, name, change)
    with pytest.raises(StoreError, match=rf"^{path}: /{name} does not match its content digest \(block 0 of 1: entries "
                                         rf"0\.\.\d+\); it was changed after it was written, or the disk damaged it"):
        with HessianStore(path) as store:
            store.hessian("first", 0)


def test_an_augmentation_store_moved_or_scaled_after_it_was_made_is_refused(labelled_store, tmp_path):
    """Today's run would train on the changed store; the digest written with it refuses it, naming the dataset."""
    from hessdistill.augment.run import augmented
    from hessdistill.data.datamodule import StoreDataModule
    from hessdistill.data.labels import StoredLabels

    dm = StoreDataModule(str(labelled_store), labels=StoredLabels("ani1x"), rows=2, batch_size=4,
                         split=(0.5, 0.25, 0.25), split_seed=0, cutoff=4.0)
    config = compose_config("train", [f"subset.store={labelled_store}", "augment=rattle",
                                      f"augment.store={tmp_path / 'aug.h5'}", "augment.progress=false",
                                      "augment.generator.copies=1"])
    (path,) = augmented(config, dm)
    pristine = path.read_bytes()
    for name, change in [("structures/positions", lambda p: p + 0.02), ("structures/energy", lambda e: 10.0 * e),
                         ("structures/forces", lambda f: 10.0 * f), ("teachers/ani1x/hessian", lambda h: 10.0 * h)]:
        path.write_bytes(pristine)
        rewrite(path, name, change)
        with pytest.raises(StoreError, match=rf"^{path}: /{name} does not match its content digest"):
            augmented(config, dm)  # a run reusing the store
            dm.add_training_store(path)
    path.write_bytes(pristine)
    assert augmented(config, dm) == [path]


def test_sampled_checks_have_bounded_cost_and_a_full_verify_finds_any_block(tmp_path, monkeypatch):
    """Blocks of 256 bytes: each open checks the first, the last and 2 random blocks of each dataset; ``verify()``
    and ``hessdistill-precompute verify=true`` check all of them and find a bit flipped in a middle block."""
    from hessdistill.cli.precompute import run

    monkeypatch.setattr(store_digests, "BLOCK_BYTES", 256)
    path = random_store(tmp_path / "s.h5")
    with HessianStore(path) as store:
        g = store.teacher_group("first")
        entries = store_digests.layout(g, 256)
        blocks = {data.name: count for data, _, _, count in entries}
        assert blocks["/teachers/first/hessian"] > 20
        sampled = store_digests.verify(path, g)
        assert sampled <= 4 * len(entries) < sum(blocks.values())
        assert store.verify() == {"structures": store_digests.verify(path, store.file["structures"], sample=False),
                                  "first": sum(blocks.values())}
    assert run(precompute_config(path, "verify=true"))["verified"]["first"] == sum(blocks.values())
    with h5py.File(path, "r") as f:  # float32 Hessian values per block
        rows = {data.name: rows for data, rows, _, _ in store_digests.layout(f["teachers/first"], 256)}
    rows, pristine = rows["/teachers/first/hessian"], path.read_bytes()
    middle, last = blocks["/teachers/first/hessian"] // 2, blocks["/teachers/first/hessian"] - 1
    rewrite(path, "teachers/first/hessian", lambda h: flipped(h, 8 * 4 * middle * rows + 5))
    words = rf"/teachers/first/hessian does not match its content digest \(block {middle} of "
    with HessianStore(path) as store, pytest.raises(StoreError, match=words):
        store.verify()
    with pytest.raises(StoreError, match=words):
        run(precompute_config(path, "verify=true"))
    for end in (0, last):  # the first and last blocks: checked on every open
        path.write_bytes(pristine)
        rewrite(path, "teachers/first/hessian", lambda h, end=end: flipped(h, 8 * 4 * end * rows))
        with HessianStore(path) as store, pytest.raises(StoreError, match=rf"/teachers/first/hessian does not match "
                                                                          rf"its content digest \(block {end} of "):
            store.teacher_group("first")


def test_stores_of_older_versions_open_without_digests_and_log_it_once(tmp_path, caplog):
    path = random_store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        del f["structures/digest"], f["teachers/first/digest"]
    with caplog.at_level(logging.INFO, logger="hessdistill.data.store_digests"):
        for _ in range(2):
            with HessianStore(path) as store:
                assert store.is_complete("first") and store.verify() == {"structures": None, "first": None}
    notes = [r.getMessage() for r in caplog.records if "has no content digest" in r.getMessage()]
    assert notes == [f"{path}: /structures has no content digest (written before hessdistill kept them); its datasets "
                     f"are not checked against changes",
                     f"{path}: /teachers/first has no content digest (written before hessdistill kept them); its "
                     f"datasets are not checked against changes"]


def test_a_teacher_killed_before_its_seal_is_logged_and_sealed_by_the_next_writer(tmp_path, caplog):
    path = random_store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        f["teachers/first/digest"][-1] = 0  # as left by a kill between the last completion mark and the seal
    with caplog.at_level(logging.WARNING, logger="hessdistill.data.store_digests"), HessianStore(path) as store:
        assert store.is_complete("first") and store.verify()["first"] is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: /teachers/first is complete, but its content digest is not sealed (a teacher step stopped between "
        f"its last label and its seal, or an edit); its datasets are not checked (a teacher group: rerun "
        f"hessdistill-precompute for this teacher to seal it)"]
    with HessianStore(path, mode="a") as store:
        store.seal_teacher("first")  # what the resumed precompute does at its end
    with HessianStore(path) as store:
        assert store.verify()["first"] > 0
    rewrite(path, "teachers/first/energy", lambda e: e + 1.0)
    with pytest.raises(StoreError, match=r"/teachers/first/energy does not match its content digest"):
        HessianStore(path).is_complete("first")


# ---- non-finite labels marked done ----------------------------------------------------------------------------
def test_non_finite_teacher_labels_marked_done_are_refused_where_used(labelled_store, tmp_path):
    """A store whose teacher energies are NaN although marked done (an older version's, with no digest to catch the
    change): the labels are refused by store, teacher and structure, and a training run stops with that line
    instead of reporting NaN teacher metrics."""
    from hessdistill.cli.train import run

    path = tmp_path / "store.h5"
    shutil.copy(labelled_store, path)
    with h5py.File(path, "a") as f:
        f["teachers/ani1x/energy"][:] = np.nan
        f["teachers/ani1x/forces"][7] = [0.0, np.inf, 0.0]
        f["teachers/ani1x"].pop("digest", None)
    with HessianStore(path) as store:
        with pytest.raises(StoreError, match=rf"^{path}\[3\]: teacher ani1x has a non-finite energy or forces although "
                                             rf"marked done; relabel this teacher$"):
            store.teacher_labels("ani1x", 3)
    with pytest.raises(StoreError, match=rf"{path}\[\d+\]: teacher ani1x has a non-finite energy or forces"):
        run(train_config(path, tmp_path), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_shard_with_non_finite_labels_marked_done_is_not_merged(tmp_path):
    path = random_store(tmp_path / "s.h5", teacher=None)
    rng = np.random.default_rng(3)
    with HessianStore(path) as store:
        for i in range(2):
            with open_shard(store, "first", i, 2) as shard:
                shard.create_teacher("first", {})
                for j in shard_indices(len(store), i, 2):
                    n = shard.n_atoms(j)
                    shard.write_teacher("first", j, 1.0, rng.normal(size=(n, 3)), rng.normal(size=(3 * n, 3 * n)))
    shard = tmp_path / "s.first.shard-1-of-2.h5"
    with h5py.File(shard, "a") as f:
        f["teachers/first/energy"][3] = np.nan
    with HessianStore(path, mode="a") as store, \
            pytest.raises(StoreError, match=rf"^{shard}\[3\]: teacher 'first' has non-finite labels although marked "
                                            rf"done; relabel it$"):
        merge_shards(store, "first", 2)


# ---- concurrent writers ----------------------------------------------------------------------------------------
def labels_of(path, teacher: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: data[()] for name, data in f["teachers"][teacher].items() if name != "digest"}


def test_two_writers_holding_a_store_open_keep_each_others_teachers(tmp_path, monkeypatch):
    """Both open the store before either adds its teacher (HDF5 locking off, so both may): the second rebuild is
    made from the first one's file, and a write after a rebuild goes to the new file, not the replaced one."""
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    path = random_store(tmp_path / "s.h5", teacher=None)
    a, b = HessianStore(path, mode="a"), HessianStore(path, mode="a")
    a.create_teacher("a", {})
    b.create_teacher("b", {})
    for i in range(len(a)):
        for store, name in ((a, "a"), (b, "b")):
            n = store.n_atoms(i)
            store.write_teacher(name, i, float(i), np.full((n, 3), i), np.full((3 * n, 3 * n), float(name == "a")))
    a.close(), b.close()
    with HessianStore(path) as store:
        assert store.teachers() == ["a", "b"] and store.is_complete("a") and store.is_complete("b")
        assert store.hessian("a", 5).min() == 1.0 and store.hessian("b", 5).max() == 0.0
        assert [store.teacher_labels("b", i)[0] for i in range(len(store))] == list(range(len(store)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no lock or side file left


def test_a_store_made_meanwhile_by_another_process_is_not_replaced(tmp_path, monkeypatch):
    """Two precomputes of one new subset: the one that builds the store second neither renames its copy over the
    first one's store (labels and all) nor fails: it uses that store."""
    import ase.io
    from omegaconf import OmegaConf

    from hessdistill.data import subset

    path, theirs, structures = tmp_path / "s.h5", random_store(tmp_path / "theirs.h5"), random_structures()

    def stream():
        yield from structures[:3]
        shutil.copy(theirs, path)  # the other process renames its store into place meanwhile
        yield from structures[3:]

    with pytest.raises(FileExistsError, match=f"{path} was made by another process meanwhile"):
        write_structures(path, stream(), chunk_size=2)
    assert path.read_bytes() == theirs.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "theirs.h5"]

    path.unlink()
    ase.io.write(tmp_path / "frames.extxyz", [s.to_atoms() for s in structures])
    config = OmegaConf.create({"name": "frames", "store": str(path), "select": [],
                               "source": {"_target_": "hessdistill.data.sources.ase_files.read_ase",
                                          "path": str(tmp_path / "frames.extxyz")}})
    real = subset.write_structures

    def racing(target, kept, **kwargs):  # the same subset, built and labelled by another process meanwhile
        kept = list(kept)
        real(tmp_path / "other.h5", kept, **kwargs)
        with HessianStore(tmp_path / "other.h5", mode="a") as other:
            other.create_teacher("other", {})
        os.replace(tmp_path / "other.h5", target)
        return real(target, kept, **kwargs)

    monkeypatch.setattr(subset, "write_structures", racing)
    assert subset.build_store(config) == path
    with HessianStore(path) as store:
        assert store.teachers() == ["other"] and len(store) == len(structures)


CONCURRENT = """
import os, sys, time, torch
torch.set_num_threads(1)
from hessdistill.data.store import HessianStore
from hessdistill.teacher_step.run import precompute_teacher
from hessdistill.teachers.ani import ANITeacher
store, teacher = HessianStore(sys.argv[1], mode="a"), ANITeacher(name=sys.argv[2])
open(sys.argv[3], "w").close()
while not all(os.path.exists(p) for p in sys.argv[4:]):  # both hold the store open before either writes
    time.sleep(0.01)
precompute_teacher(store, teacher, batch_size=8, strategy="vmap", progress=False)
store.close()
"""


def test_two_precomputes_of_different_teachers_on_one_store_keep_both(labelled_store, tmp_path):
    """Two processes, HDF5 file locking off (as on many NFS and Lustre mounts), label one store with two teachers
    at once: both groups end complete and equal to a single process's labels (the ANI-1x of ``labelled_store``)."""
    path = tmp_path / "s.h5"
    with HessianStore(labelled_store) as store:
        store.copy_structures(path)
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    names = ["first", "second"]
    ready = [tmp_path / f"{name}.ready" for name in names]
    children = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(path), name, str(mine), *map(str, ready)],
                                 env=env, stderr=subprocess.PIPE, text=True) for name, mine in zip(names, ready)]
    errors = [child.communicate(timeout=600)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0], errors
    single = labels_of(labelled_store, "ani1x")
    with HessianStore(path) as store:
        assert store.teachers() == ["first", "second"]
        assert store.is_complete("first") and store.is_complete("second") and store.verify()["second"] > 0
    for name in ("first", "second"):
        got = labels_of(path, name)
        assert sorted(got) == sorted(single)
        for key, values in single.items():
            np.testing.assert_array_equal(got[key], values, err_msg=f"{name}/{key}")


# ---- a disk that fills during label writes; read-only stores ---------------------------------------------------
def test_a_disk_filling_during_label_writes_gives_one_line_and_keeps_the_labels_before(tmp_path, monkeypatch):
    """The write fails inside h5py with ENOSPC (HDF5's sieve buffer is off for writers, so a real full disk fails
    there too, not later in a flush or close, where h5py crashes): one line, and the store keeps every label
    written before it."""
    path, rng = random_store(tmp_path / "s.h5", teacher=None), np.random.default_rng(2)
    with HessianStore(path, mode="a") as store:
        store.create_teacher("first", {})
        written = {}
        for i in range(3):
            n = store.n_atoms(i)
            written[i] = (float(i), rng.normal(size=(n, 3)), rng.normal(size=(3 * n, 3 * n)))
            store.write_teacher("first", i, *written[i])
        real = h5py.Dataset.__setitem__

        def full_disk(data, key, value):
            if data.name == "/teachers/first/hessian":
                raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, error "
                                            "message = 'No space left on device')")
            real(data, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", full_disk)
        n = store.n_atoms(3)
        with pytest.raises(StoreError, match=rf"^{path}\[3\]: writing the labels of teacher 'first' failed \(No space "
                                             rf"left on device\); the structures labelled before are kept: free some "
                                             rf"space, then rerun to resume$"):
            store.write_teacher("first", 3, 3.0, rng.normal(size=(n, 3)), rng.normal(size=(3 * n, 3 * n)))
        monkeypatch.undo()
    with HessianStore(path) as store:
        assert store.teacher_done("first").tolist() == [True, True, True, False, False, False]
        for i, (energy, forces, hessian) in written.items():
            assert store.teacher_labels("first", i)[0] == energy
            np.testing.assert_array_equal(store.teacher_labels("first", i)[1], forces)
            np.testing.assert_array_equal(store.hessian("first", i), hessian.astype(np.float32))


def as_unprivileged(action) -> str:
    """``action()``'s result, or its StoreError's message, from a process that may not override file permissions:
    a forked child that drops root to nobody (65534) where this runs as root, else this process."""
    def attempt() -> str:
        try:
            return str(action())
        except StoreError as exc:
            return str(exc)

    if os.geteuid() != 0:
        return attempt()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            try:
                os.setgid(65534)
                os.setuid(65534)
            except OSError as exc:
                os.write(write, f"skip: cannot drop root here ({exc})".encode())
            else:
                os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as result:
        text = result.read()
    os.waitpid(pid, 0)
    if text.startswith("skip: "):
        pytest.skip(text.removeprefix("skip: "))
    return text


@pytest.fixture
def open_dir():
    """A directory in the system's temporary folder that every user may enter (pytest's own are root's only, and
    ``as_unprivileged`` may run as nobody), removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="hessdistill-readonly-"))
    where.chmod(0o777)
    yield where
    for folder in (where, *where.rglob("*")):
        if folder.is_dir():
            folder.chmod(0o777)
    shutil.rmtree(where)


def test_a_read_only_store_is_called_read_only_not_damaged(open_dir):
    path = random_store(open_dir / "s.h5")
    path.chmod(0o444)
    blob = path.read_bytes()
    said = as_unprivileged(lambda: HessianStore(path, mode="a"))
    assert said == (f"{path} is read-only: this process may not write it (-r--r--r--, owner uid {os.geteuid()}); "
                    f"make it writable, copy the store to a writable place, or open it for reading only")
    path.chmod(0o666)
    folder = open_dir / "locked"
    folder.mkdir()
    inner = random_store(folder / "s.h5")
    inner.chmod(0o666)
    folder.chmod(0o555)  # the store may be written, but no side or lock file made beside it
    for action in (lambda: HessianStore(inner, mode="a").create_teacher("second", {}),
                   lambda: HessianStore(inner, mode="a").write_teacher("first", 0, 0.0, np.zeros((3, 3)),
                                                                      np.zeros((9, 9)))):
        assert as_unprivileged(action) == (f"{inner} is read-only: this process may not create files in {folder} (a "
                                           f"write makes a side file and a lock file beside the store); make it "
                                           f"writable, copy the store to a writable place, or open it for reading only")
    assert path.read_bytes() == blob and sorted(p.name for p in folder.iterdir()) == ["s.h5"]


def test_read_only_messages_name_the_cause(tmp_path, monkeypatch):
    path = random_store(tmp_path / "s.h5", teacher=None)
    assert str(store_files.read_only(path, errno.EROFS)) == (
        f"{path} is read-only: it is on a read-only file system; make it writable, copy the store to a writable place, "
        f"or open it for reading only")
    assert "the system refuses writes (Operation not permitted)" in str(store_files.read_only(path, errno.EPERM))
    monkeypatch.setattr(store_files.os, "access", lambda p, how: str(p) != str(path))
    mode = stat.filemode(path.stat().st_mode)
    assert f"{path} is read-only: this process may not write it ({mode}, owner uid " in str(store_files.read_only(path))
