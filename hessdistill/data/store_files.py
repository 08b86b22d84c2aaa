"""Store files on disk: opened with errors in our words, written beside their place and renamed into it, locked
among writers, and sized against the free disk and the file-size limit before a byte is written.

Every change to a store's HDF5 structure (new structures, a new teacher group, node features, compression) is
made in ``<store>.<pid>.partial`` and renamed over the store only once complete and synced, so a failure at any
point (full disk, file-size limit, a crash or SIGKILL inside HDF5) leaves the store exactly as it was. Only raw
label bytes are written into a live store (``HessianStore.write_teacher``), never its metadata.

A side file's size is checked before HDF5 writes into it (``require_space``): h5py does not survive a failed
write (it can crash the process while closing such a file), so a full disk, a quota or a file-size limit must
show up as an error of ours before the first byte. A store open for writing has HDF5's sieve buffer switched off
(``open_h5``), so a label write that fails (a disk that filled after the check) fails in the write call itself and
leaves nothing dirty behind for a later flush or close to crash on.

Writers of one store take its lock (``store_lock``) around every rebuild-and-rename and label write; a store this
process may not write gets one line saying so (``read_only``), never "damaged".
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import resource
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from hessdistill.errors import HessdistillError

log = logging.getLogger(__name__)

GIB = 2**30
SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of an HDF5 file (stores have no user block)
REBUILD = "rebuild it with hessdistill-precompute (or copy it again)"


class StoreError(HessdistillError, ValueError):
    """A store file that is missing, malformed or lacks what was asked for; the message names the file."""


def read_only(path: Path, code: int | None = None) -> StoreError:
    """The one line for a store this process may not write (``code``: the errno of the failed open or create, if
    any): a read-only file system, a directory it may not create files in (a write makes a side file and a lock
    file beside the store), or the file's own permissions."""
    if code == errno.EROFS:
        why = "it is on a read-only file system"
    elif path.exists() and not os.access(path, os.W_OK):
        info = path.stat()
        why = f"this process may not write it ({stat.filemode(info.st_mode)}, owner uid {info.st_uid})"
    elif not os.access(path.parent, os.W_OK):
        why = (f"this process may not create files in {path.parent} (a write makes a side file and a lock file "
               f"beside the store)")
    else:  # e.g. an immutable file (chattr +i), which os.access does not see
        why = f"the system refuses writes ({os.strerror(code or errno.EACCES)})"
    return StoreError(f"{path} is read-only: {why}; make it writable, copy the store to a writable place, or open "
                      f"it for reading only")


def _writer(path: Path) -> h5py.File:
    """``path`` opened for writing without HDF5's sieve buffer (see the module docstring)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)  # as h5py's own: closing the file closes every handle in it
    fapl.set_sieve_buf_size(0)
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl))


def h5_errno(exc: OSError) -> int:
    """The errno of an h5py OSError (0 when unknown): its own, or the one HDF5 names in its message."""
    return exc.errno or int((re.search(r"errno = (\d+)", str(exc)) or [0, 0])[1])


def file_identity(f: h5py.File) -> tuple[int, int]:
    """(device, inode) of the file an h5py handle has open: differs from the path's once the store was replaced."""
    info = os.fstat(f.id.get_vfd_handle())
    return info.st_dev, info.st_ino


def open_h5(path: Path, mode: str) -> h5py.File:
    """``path`` opened for reading (mode "r") or writing (any other mode; the file must exist); a file cut short,
    locked by another process, read-only, not HDF5 at all or with a damaged header raises one StoreError line naming
    the file and the likely cause."""
    try:
        return h5py.File(path, "r") if mode == "r" else _writer(path)
    except OSError as exc:
        text = str(exc)
        code = h5_errno(exc)
        if mode != "r" and code in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise read_only(path, code) from None
        cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
        if cut:
            raise StoreError(f"{path} is cut short: {int(cut[1])} of its {int(cut[2])} bytes are there (an "
                             f"interrupted copy or download, or a disk that filled while it was written); "
                             f"{REBUILD}") from None
        if "unable to lock file" in text:
            holder = "is writing it" if mode == "r" else "has it open"
            raise StoreError(f"{path} is locked: another process (a precompute, training or evaluation run) {holder}"
                             f" (HDF5 file locking); wait for it to finish or stop it, then retry") from None
        with open(path, "rb") as f:
            if f.read(len(SIGNATURE)) != SIGNATURE:
                raise StoreError(f"{path} is not an HDF5 file (empty, or another format); {REBUILD}") from None
        detail = text.removeprefix("Unable to synchronously ")
        raise StoreError(f"{path} is damaged: HDF5 cannot read its header ({detail}); likely cut short or "
                         f"overwritten; {REBUILD}") from None


def preallocated(group: h5py.Group, name: str, shape: tuple, dtype) -> h5py.Dataset:
    """A contiguous dataset whose file space is allocated now: later writes change raw bytes only, never HDF5
    metadata, so a process killed mid-write cannot leave the file's structure inconsistent (resumable
    precompute), and a structure's block is one contiguous read."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return group.create_dataset(name, shape, dtype, dcpl=dcpl)


@contextmanager
def replacing(path: Path, keep_existing: bool = False) -> Iterator[Path]:
    """A side file ``<path>.<pid>.partial`` to write the new version of ``path`` into: when the block completes it
    is synced to disk and renamed over ``path`` under the store's lock (``store_lock``); when the block fails it is
    removed and ``path`` is untouched. (The pid keeps concurrent shard jobs that race to create the same file
    apart.) keep_existing: a new store; FileExistsError, and ``path`` untouched, if another process made one there
    meanwhile. A caller whose new version is computed from the store's current content holds the lock around
    the whole block (``HessianStore._rebuild``), so no other writer's change is lost in between."""
    if not os.access(path.parent, os.W_OK):
        raise read_only(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with store_lock(path):
            if keep_existing and path.exists():
                raise FileExistsError(f"{path} was made by another process meanwhile")
            if path.exists():  # a replaced file keeps its permissions
                shutil.copymode(path, partial)
            os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


_held: dict[Path, list] = {}  # lock file → [fd (None: unlockable), depth, pid] of the locks this process holds
_unlockable: set[Path] = set()  # directories whose file system refused flock (warned once)


@contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """The store at ``path`` locked against every other writer: ``fcntl.flock`` on the side file ``<path>.lock``,
    made on first use and removed on release; reentrant within a process. It works where HDF5's own file locking is
    off (HDF5_USE_FILE_LOCKING=FALSE, common on NFS and Lustre): on NFS flock is an NFS lock across nodes, on Lustre
    it needs the ``flock`` mount option (where flock is refused, a warning says that writers are not kept apart).
    A waiting writer logs once that it waits. StoreError (``read_only``) where the lock file cannot be made."""
    lock = path.with_name(path.name + ".lock").absolute()
    held = _held.get(lock)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = _acquire(lock, path)
    _held[lock] = [fd, 1, os.getpid()]
    try:
        yield
    finally:
        del _held[lock]
        if fd is not None:
            lock.unlink(missing_ok=True)  # while locked: a waiter that then gets this file sees it gone and retries
            fcntl.flock(fd, fcntl.LOCK_UN)  # now, not at close: a forked child's copy of fd would keep it locked
            os.close(fd)


def _acquire(lock: Path, path: Path) -> int | None:
    """An open descriptor of ``lock`` holding its exclusive flock (None where the file system has no flock)."""
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise read_only(path, exc.errno) from None
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.info("waiting for %s: another process is writing %s", lock, path.name)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            if lock.parent not in _unlockable:
                _unlockable.add(lock.parent)
                log.warning("%s: the file system refuses flock (%s); concurrent writers of stores there are not kept "
                            "apart (on Lustre: mount with -o flock)", lock.parent, os.strerror(exc.errno))
            return None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the last holder removed this file as it released it: lock the one there now


def _gib(n: int) -> str:
    return f"{n / GIB:.3g} GiB"


def require_space(path: Path, needed: int, what: str) -> None:
    """StoreError naming ``path`` and ``what`` unless a file of ``needed`` bytes can be written beside it: the free
    space of its disk, this process's file-size limit (``ulimit -f``), and then a claim of that many bytes for a
    probe file, deleted at once (``posix_fallocate``; catches disk quotas, which ``disk_usage`` does not see)."""
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise StoreError(f"{path}: {what} needs {_gib(needed)} but {path.parent} has {_gib(free)} free; free some "
                         f"space or move the store to a larger disk")
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and needed > limit:
        raise StoreError(f"{path}: {what} needs a {_gib(needed)} file but this process may write files of "
                         f"{_gib(limit)} at most (ulimit -f); raise the limit")
    if not hasattr(os, "posix_fallocate"):  # macOS: the checks above are all
        return
    probe = path.with_name(f"{path.name}.{os.getpid()}.space")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, needed)
    except OSError as exc:
        raise StoreError(f"{path}: {what} needs {_gib(needed)}, which {path.parent} does not grant "
                         f"({exc.strerror}: a disk quota?); free some space or move the store") from None
    finally:
        os.close(fd)
        probe.unlink()
