"""Hostile or unlucky store files and faults: a failed teacher allocation (file-size limit, full disk, quota, an
error inside the write, hostile sizes) leaves every other teacher's labels bit-identical; hostile index arrays are
refused by name before anything is read through them; a store built from another source is refused; a truncated
or locked store gets one line in our words. Each case asserts the message and that no existing file changed."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from types import SimpleNamespace

import ase.io
import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import rattled
from hessdistill.data import store_files
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import Structure
from hessdistill.data.subset import build_store

MOLECULES = ("H2O", "NH3", "CH4", "CH3OH", "HCOOH", "CH3CH2OH")


def labelled_structures(seed: int = 0) -> list[Structure]:
    rng, out = np.random.default_rng(seed), []
    for k, name in enumerate(MOLECULES):
        s = Structure.from_atoms(rattled(name, seed=k), source=f"made[{k}]")
        s.energy, s.forces = float(rng.normal(-100.0, 5.0)), rng.normal(size=(s.n_atoms, 3))
        s.info["molecule"] = name
        out.append(s)
    return out


@pytest.fixture
def finished(tmp_path):
    """A store whose teacher "first" has finished random labels (no teacher needed)."""
    path, rng = tmp_path / "s.h5", np.random.default_rng(1)
    write_structures(path, labelled_structures())
    with HessianStore(path, mode="a") as store:
        store.create_teacher("first", {"teacher": "first"})
        for i in range(len(store)):
            n = store.n_atoms(i)
            store.write_teacher("first", i, float(rng.normal()), rng.normal(size=(n, 3)), rng.normal(size=(3 * n,) * 2))
        assert store.is_complete("first")
    return path


def labels(path) -> dict[str, np.ndarray]:
    """Every dataset of teacher "first", read raw."""
    with h5py.File(path, "r") as f:
        return {name: data[:] for name, data in f["teachers/first"].items()}


def assert_same_labels(path, before: dict[str, np.ndarray]) -> None:
    after = labels(path)
    assert sorted(after) == sorted(before)
    for name, data in before.items():
        assert after[name].tobytes() == data.tobytes(), name  # bit-identical
    with HessianStore(path) as store:  # and readable through the store
        assert store.is_complete("first") and store.hessian("first", 3).shape == (3 * store.n_atoms(3),) * 2


ALLOCATE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
import hessdistill.data.store as store_module
if sys.argv[3] == "unchecked":  # a failure no check foresaw (e.g. a disk that filled meanwhile)
    store_module.require_space = lambda *args: None
store = store_module.HessianStore(sys.argv[1], mode="a")
try:
    store.create_teacher("second", {"teacher": "second"})
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def allocate_under_file_size_limit(path, limit: int, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ALLOCATE, str(path), str(limit), mode], capture_output=True,
                          text=True, timeout=120)


def test_a_file_size_limit_refuses_a_new_teacher_and_changes_nothing(finished):
    before, blob = labels(finished), finished.read_bytes()
    child = allocate_under_file_size_limit(finished, len(blob) + 4096, "checked")
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip().startswith(f"StoreError: {finished}: adding teacher 'second' needs a ")
    assert "(ulimit -f); raise the limit" in child.stdout
    assert finished.read_bytes() == blob
    assert sorted(p.name for p in finished.parent.iterdir()) == ["s.h5"]  # no side or probe file left
    assert_same_labels(finished, before)


def test_a_write_failing_past_the_checks_leaves_other_teachers_intact(finished):
    """The side file hits the file-size limit inside HDF5 (h5py may even crash the process while closing it):
    the store is never written, so the first teacher's labels stay bit-identical and the store takes the second
    teacher afterwards. The only bytes that may differ are HDF5's open-for-writing flag in the superblock (bytes
    20-23), left set by any process that dies holding the file open for writing."""
    before, blob = labels(finished), finished.read_bytes()
    child = allocate_under_file_size_limit(finished, len(blob), "unchecked")
    ours = f"StoreError: {finished}: adding teacher 'second' failed while writing"
    assert child.returncode != 0 or child.stdout.startswith(ours), child.stdout  # it failed: by our error, or a crash
    after = finished.read_bytes()
    assert len(after) == len(blob)
    assert set(np.flatnonzero(np.frombuffer(after, np.uint8) != np.frombuffer(blob, np.uint8))) <= set(range(20, 24))
    assert_same_labels(finished, before)
    # a crash may leave its side file, and the lock file it held (harmless: the kernel released the lock)
    assert {p.suffix for p in finished.parent.iterdir()} <= {".h5", ".partial", ".lock"}
    with HessianStore(finished, mode="a") as store:
        store.create_teacher("second", {"teacher": "second"})
        assert store.teachers() == ["first", "second"]
    assert_same_labels(finished, before)


@pytest.mark.parametrize("fault", ["full disk", "quota"])
def test_no_room_for_a_new_teacher_is_refused_before_writing(finished, monkeypatch, fault):
    before, blob = labels(finished), finished.read_bytes()
    if fault == "full disk":
        monkeypatch.setattr(store_files.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**20))
        expected = r"needs [0-9.e-]+ GiB but \S+ has 0.000977 GiB free; free some space or move the store"
    else:  # disk_usage sees room, the quota does not grant it
        def no_quota(fd, offset, length):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        monkeypatch.setattr(store_files.os, "posix_fallocate", no_quota)
        expected = r"needs [0-9.e-]+ GiB, which \S+ does not grant \(Disk quota exceeded: a disk quota\?\)"
    with HessianStore(finished, mode="a") as store:
        with pytest.raises(StoreError, match=f"{finished}: adding teacher 'second' {expected}"):
            store.create_teacher("second", {"teacher": "second"})
        assert store.teachers() == ["first"]  # the store object stays usable
    assert finished.read_bytes() == blob
    assert sorted(p.name for p in finished.parent.iterdir()) == ["s.h5"]
    assert_same_labels(finished, before)


def test_an_error_while_building_a_teacher_leaves_the_store_as_it_was(finished, monkeypatch):
    import hessdistill.data.store as store_module

    before, blob = labels(finished), finished.read_bytes()
    real = store_module.preallocated

    def failing(group, name, shape, dtype):
        if name == "hessian":
            raise OSError("write failed: no space left on device")
        return real(group, name, shape, dtype)

    monkeypatch.setattr(store_module, "preallocated", failing)
    with HessianStore(finished, mode="a") as store:
        with pytest.raises(StoreError, match=rf"^{finished}: adding teacher 'second' failed while writing "
                                             rf"s.h5.\d+.partial, which is removed; the store is unchanged \(write "
                                             rf"failed: no space left on device\)$"):
            store.create_teacher("second", {"teacher": "second"}, layout="upper")
        monkeypatch.undo()
        assert store.teachers() == ["first"]
    assert finished.read_bytes() == blob
    assert sorted(p.name for p in finished.parent.iterdir()) == ["s.h5"]
    assert_same_labels(finished, before)


@pytest.mark.parametrize("atoms", [10**8, 10**11])
def test_sizes_claiming_a_huge_structure_are_refused_before_any_allocation(finished, atoms):
    """Consistent but hostile sizes (the last structure's datasets declared for ``atoms`` atoms, never allocated:
    the file stays small). 10⁸ atoms: the store opens, and adding a teacher is refused by the space check instead of
    preallocating 3·10⁸ GiB; 10¹¹ atoms: the Hessian offsets would overflow, so the store is refused when opened."""
    with h5py.File(finished, "a") as f:
        g = f["structures"]
        offsets = g["offsets"][:]
        offsets[-1] = offsets[-2] + atoms
        g["offsets"][:] = offsets
        for name, shape, dtype in (("z", (offsets[-1],), np.int16), ("positions", (offsets[-1], 3), float),
                                   ("forces", (offsets[-1], 3), float)):
            del g[name]
            g.create_dataset(name, shape, dtype)
        del f["teachers"]
        del g["digest"]  # as in a store of an older version: its digest would refuse the changed sizes at once
    blob = finished.read_bytes()
    assert len(blob) < 2**20
    if atoms == 10**8:
        with HessianStore(finished, mode="a") as store:
            with pytest.raises(StoreError, match=f"^{finished}: adding teacher 'second' needs [0-9.e+]+ GiB but "):
                store.create_teacher("second", {"teacher": "second"})
    else:
        with pytest.raises(StoreError, match=f"^{finished}: /structures/offsets claim structures of up to "
                                             r"100000000000 atoms, whose Hessians would hold 9e\+22 values"):
            HessianStore(finished, mode="a")
    assert finished.read_bytes() == blob
    assert sorted(p.name for p in finished.parent.iterdir()) == ["s.h5"]


def replace_dataset(path, name: str, data=None, shape=None, dtype=np.int64) -> None:
    with h5py.File(path, "a") as f:
        del f[name]
        if data is not None:
            f[name] = data
        else:
            f.create_dataset(name, shape, dtype)  # declared, never allocated


HOSTILE = {  # where, change, the error's words
    "offsets end past the atoms": ("structures/offsets", lambda o: np.r_[o[:-1], 10**6],
                                   r"/structures/z has shape \(32,\), expected \(1000000,\) "
                                   r"\(/structures/offsets claim 6 structures of 1000000 atoms in all\)"),
    "offsets going backwards": ("structures/offsets", lambda o: np.r_[o[:2], o[1] - 1, o[3:]],
                                r"/structures/offsets\[2\] = \d+ breaks the rule offsets\[0\] = 0 and at least one "
                                r"atom per structure"),
    "offsets of 10^11 entries": ("structures/offsets", (10**11 + 1,),
                                 r"/structures/offsets has shape \(100000000001,\), expected \(7,\) \(M \+ 1 for "
                                 r"M = 6 structures in /structures/energy\)"),
    "Hessian offsets past the Hessian": ("teachers/first/hessian_offsets", lambda o: np.r_[o[:-1], 10**11],
                                         r"/teachers/first/hessian_offsets\[6\] = 100000000000, expected \d+ for "
                                         r"layout 'full' and the structures' atom counts"),
    "Hessian offsets of 10^11 entries": ("teachers/first/hessian_offsets", (10**11 + 1,),
                                         r"/teachers/first/hessian_offsets has shape \(100000000001,\), expected "
                                         r"\(7,\) \(the store holds 6 structures of 32 atoms in all\)"),
    "Hessian offsets of floats": ("teachers/first/hessian_offsets", lambda o: o.astype(float),
                                  r"/teachers/first/hessian_offsets holds float64, not integers"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_index_arrays_are_refused_by_name_without_reading_through_them(finished, case):
    """A 10¹¹-entry index array would take 745 GiB to read: it is refused by its shape; values are checked before
    they index anything."""
    name, change, words = HOSTILE[case]
    if callable(change):
        with h5py.File(finished, "r") as f:
            data = change(f[name][:])
        replace_dataset(finished, name, data=data)
    else:
        replace_dataset(finished, name, shape=change)
    blob = finished.read_bytes()

    def use():
        with HessianStore(finished) as store:
            store.hessian("first", 0)

    with pytest.raises(StoreError, match=f"^{finished}: {words}; the file is damaged or was not written by "
                                         f"hessdistill; rebuild it with hessdistill-precompute$"):
        use()
    assert finished.read_bytes() == blob


def test_hostile_row_indices_are_refused_by_name(tmp_path):
    path = tmp_path / "rows.h5"
    write_structures(path, labelled_structures())
    with HessianStore(path, mode="a") as store:
        store.create_teacher("first", {}, layout="rows", rows_per_structure=2)
    with h5py.File(path, "a") as f:
        f["teachers/first/hessian_row_index"][4] = [0, 10**9]
    with pytest.raises(StoreError, match=r"rows.h5: /teachers/first/hessian_row_index\[4\] = \[0, 1000000000\] names "
                                         r"rows outside 0..14 of structure 4; the file is damaged"):
        HessianStore(path).teacher_done("first")


# ---- a store built from another source -------------------------------------------------------------------------
def subset(tmp_path, source_path, **arguments):
    return OmegaConf.create({"name": "frames", "store": str(tmp_path / "frames.h5"), "select": [],
                             "source": {"_target_": "hessdistill.data.sources.ase_files.read_ase",
                                        "path": str(source_path), **arguments}})


def write_frames(path, energy: float = -1.0) -> None:
    frames = []
    for s in labelled_structures():
        s.energy = energy
        frames.append(s.to_atoms())
    ase.io.write(path, frames)


REBUILD = (r"rebuild it: delete \S+frames.h5 \(its teacher labels go with it\) and rerun `hessdistill-precompute "
           r"subset=frames teacher=<teacher>`, or set subset.store to a new file$")


def test_a_store_is_refused_once_its_source_file_changes(tmp_path):
    source = tmp_path / "frames.extxyz"
    write_frames(source)
    path = build_store(subset(tmp_path, source))
    blob = path.read_bytes()
    assert build_store(subset(tmp_path, source)) == path  # unchanged: reused
    moved = tmp_path / "moved.extxyz"
    shutil.copy(source, moved)
    assert build_store(subset(tmp_path, moved)) == path  # the same content elsewhere: reused
    write_frames(source, energy=-2.0)
    stamp = r"\d+ bytes modified [-T:0-9]+, sha1 [0-9a-f]{12}"
    with pytest.raises(StoreError, match=rf"frames.h5 is stale: it was built from {source}, the subset now reads "
                                         rf"{source}, and they differ in file content \({stamp} -> {stamp}\); "
                                         + REBUILD):
        build_store(subset(tmp_path, source))
    assert path.read_bytes() == blob


def test_a_store_is_refused_when_the_source_units_change(tmp_path):
    source = tmp_path / "frames.extxyz"
    write_frames(source)
    path = build_store(subset(tmp_path, source))
    blob = path.read_bytes()
    assert build_store(subset(tmp_path, source, energy_unit=1.0)) == path  # the default, now spelled out
    with pytest.raises(StoreError, match=r"frames.h5 is stale: .* differ in energy_unit 1.0 -> 0.0434; " + REBUILD):
        build_store(subset(tmp_path, source, energy_unit=0.0434))
    source.unlink()  # a source that is gone is not checked: the store is all there is
    assert build_store(subset(tmp_path, source)) == path
    assert path.read_bytes() == blob


# ---- truncated and locked stores -------------------------------------------------------------------------------
TRUNCATED = {  # bytes kept (None: half the file): the error's words
    None: r"is cut short: \d+ of its \d+ bytes are there \(an interrupted copy or download, or a disk that filled "
          r"while it was written\)",
    4: r"is not an HDF5 file \(empty, or another format\)",
    10: r"is damaged: HDF5 cannot read its header \(open file \(bad byte number in an address\)\); likely cut short "
        r"or overwritten",
}


@pytest.mark.parametrize("keep", list(TRUNCATED))
def test_a_truncated_store_gets_one_line_naming_file_and_cause(finished, keep):
    with open(finished, "r+b") as f:
        f.truncate(finished.stat().st_size // 2 if keep is None else keep)
    blob = finished.read_bytes()
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=f"^{finished} {TRUNCATED[keep]}; rebuild it with hessdistill-precompute "
                                             r"\(or copy it again\)$"):
            HessianStore(finished, mode=mode)
    assert finished.read_bytes() == blob


HOLD = """
import sys, time, h5py
f = h5py.File(sys.argv[1], sys.argv[2])
print("holding", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("held, mode, holder", [("a", "r", "is writing it"), ("r", "a", "has it open")])
def test_a_store_locked_by_another_process_gets_one_line(finished, held, mode, holder):
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(finished), held], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        blob = finished.read_bytes()
        with pytest.raises(StoreError, match=rf"^{finished} is locked: another process \(a precompute, training or "
                                             rf"evaluation run\) {holder} \(HDF5 file locking\); wait for it to "
                                             rf"finish or stop it, then retry$"):
            HessianStore(finished, mode=mode)
        assert finished.read_bytes() == blob
    finally:
        child.kill()
        child.wait()
