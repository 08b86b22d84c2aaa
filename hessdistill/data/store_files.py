"""Store files on disk: opened with errors in our words, written beside their place and renamed into it, and
sized against the free disk and the file-size limit before a byte is written.

Every change to a store's HDF5 structure (new structures, a new teacher group, node features, compression) is
made in ``<store>.<pid>.partial`` and renamed over the store only once complete and synced, so a failure at any
point (full disk, file-size limit, a crash or SIGKILL inside HDF5) leaves the store exactly as it was. Only raw
label bytes are written into a live store (``HessianStore.write_teacher``), never its metadata.

A side file's size is checked before HDF5 writes into it (``require_space``): h5py does not survive a failed
write (it can crash the process while closing such a file), so a full disk, a quota or a file-size limit must
show up as an error of ours before the first byte.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from hessdistill.errors import HessdistillError

GIB = 2**30
SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of an HDF5 file (stores have no user block)
REBUILD = "rebuild it with hessdistill-precompute (or copy it again)"


class StoreError(HessdistillError, ValueError):
    """A store file that is missing, malformed or lacks what was asked for; the message names the file."""


def open_h5(path: Path, mode: str) -> h5py.File:
    """``h5py.File(path, mode)``; a file cut short, locked by another process, not HDF5 at all or with a damaged
    header raises one StoreError line naming the file and the likely cause."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        text = str(exc)
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


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A side file ``<path>.<pid>.partial`` to write the new version of ``path`` into: when the block completes it
    is synced to disk and renamed over ``path``; when the block fails it is removed and ``path`` is untouched.
    (The pid keeps concurrent shard jobs that race to create the same file apart.)"""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        if path.exists():  # a replaced file keeps its permissions
            shutil.copymode(path, partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


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
