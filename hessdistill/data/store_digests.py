"""Content digests of a store's groups: a label dataset that was changed after it was written (scaled, moved,
bit-flipped on a bad disk, edited) is refused by name when the store is opened or the teacher group first used.

Each digested group (/structures, and /teachers/<name> once its teacher step is done) holds ``digest``, (B + 1,)
uint64: the BLAKE2b-64 of every block of each of its other datasets (but ``done``), in name order, then the seal,
the BLAKE2b-64 of those B digests and the datasets' names, dtypes and shapes. A block is ``block_bytes`` (the
attribute of ``digest``; 1 MiB) of leading-axis rows (strings count ``STRING_BYTES`` each). A seal of 0 means "not
sealed": a teacher group being labelled (every label write clears it first; the write that completes the group
seals it) or one whose teacher step was killed between its last label and its seal (logged; the next precompute
seals it); a seal that matches nothing means a damaged digest or changed datasets.

Cost: writing reads the group once (the teacher step reads back what it wrote: O(labels)); an open checks the
seal (reads the B digests: 8 bytes per MiB of labels) and ``SAMPLED`` + 2 blocks of each dataset (its first, its
last and ``SAMPLED`` drawn at random on each open: at most 4 MiB per dataset, ≤ 36 MiB per group however large
the store); a dataset of one block (up to 1 MiB: e.g. the Hessians of a few hundred small molecules) is checked
whole on every open. ``verify(..., sample=False)`` checks every block (``HessianStore.verify``,
``hessdistill-precompute verify=true``). A digest finds accidental damage and careless edits; whoever can write the
file can also recompute its digests, so it proves nothing about who wrote it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import h5py
import numpy as np

from hessdistill.data.store_files import REBUILD, StoreError, preallocated

log = logging.getLogger(__name__)

DIGEST = "digest"
BLOCK_BYTES = 2**20
STRING_BYTES = 256  # nominal bytes of a variable-length string (the structures' JSON info) for block sizes
SAMPLED = 2  # random blocks checked per dataset and open, besides its first and last
UNDIGESTED = ("done", DIGEST)  # completion marks change on every resume; a cleared mark only costs a recompute
_noted: set[str] = set()  # groups without (sealed) digests already logged


def _note(path: Path, group: h5py.Group, level: int, what: str) -> None:
    """Log ``what`` about ``group`` once per process."""
    if f"{path}:{group.name}" not in _noted:
        _noted.add(f"{path}:{group.name}")
        log.log(level, "%s: %s %s", path, group.name, what)


def _hash(*parts) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def _block_hash(block: np.ndarray) -> int:
    """BLAKE2b-64 of a block's values: raw bytes, or each string length-prefixed."""
    if block.dtype.kind != "O":
        return _hash(np.ascontiguousarray(block).view(np.uint8).reshape(-1))
    items = [x if isinstance(x, bytes) else str(x).encode() for x in block.reshape(-1)]
    return _hash(*(len(x).to_bytes(8, "little") + x for x in items))


def _rows(data: h5py.Dataset, block_bytes: int) -> int:
    """Leading-axis rows per block of ``data``."""
    itemsize = STRING_BYTES if data.dtype.kind == "O" else data.dtype.itemsize
    return max(1, block_bytes // (itemsize * int(np.prod(data.shape[1:], dtype=np.int64))))


def layout(group: h5py.Group, block_bytes: int) -> list[tuple[h5py.Dataset, int, int, int]]:
    """(dataset, rows per block, first digest entry, blocks) of each digested dataset of ``group``, in name order."""
    out, first = [], 0
    for name in sorted(group):
        data = group[name]
        if name in UNDIGESTED or not isinstance(data, h5py.Dataset):
            continue
        rows = _rows(data, block_bytes)
        count = -(-data.shape[0] // rows) if data.ndim else 1
        out.append((data, rows, first, count))
        first += count
    return out


def _seal(entries: list, digests: np.ndarray) -> int:
    names = json.dumps([[data.name.rsplit("/", 1)[-1], data.dtype.str, list(data.shape)] for data, *_ in entries])
    return max(_hash(names.encode(), np.ascontiguousarray(digests, dtype=np.uint64).view(np.uint8)), 1)


def _block(data: h5py.Dataset, rows: int, b: int) -> np.ndarray:
    return data[()] if data.ndim == 0 else data[b * rows : (b + 1) * rows]


def _digests(entries: list) -> np.ndarray:
    return np.array([_block_hash(_block(data, rows, b)) for data, rows, _, count in entries for b in range(count)],
                    dtype=np.uint64)


def allocate(group: h5py.Group, block_bytes: int | None = None) -> None:
    """An unsealed ``digest`` for ``group``'s datasets, blocks of ``block_bytes`` (None: ``BLOCK_BYTES``),
    preallocated (sealed later by raw writes: ``seal``); replaces one of an earlier set of datasets. Only inside a
    side file (it changes HDF5 metadata)."""
    block_bytes = block_bytes or BLOCK_BYTES
    if DIGEST in group:
        del group[DIGEST]
    total = sum(count for *_, count in layout(group, block_bytes))
    preallocated(group, DIGEST, (total + 1,), np.uint64).attrs["block_bytes"] = block_bytes


def seal(group: h5py.Group) -> bool:
    """Write the digests of ``group``'s datasets into its ``digest`` and seal it (raw writes: the digests first,
    the seal after a flush). False, doing nothing, where the group has no ``digest`` (an older store)."""
    if DIGEST not in group:
        return False
    digest = group[DIGEST]
    entries = layout(group, int(digest.attrs["block_bytes"]))
    values = _digests(entries)
    digest[: len(values)] = values
    group.file.flush()
    digest[len(values)] = _seal(entries, values)
    group.file.flush()
    return True


def is_sealed(group: h5py.Group) -> bool:
    """Whether ``group`` has a digest whose seal matches it (its blocks unchecked: see ``verify``)."""
    if DIGEST not in group:
        return False
    digest = group[DIGEST]
    stored = digest[:]
    return stored[-1] != 0 and stored[-1] == _seal(layout(group, int(digest.attrs["block_bytes"])), stored[:-1])


def unseal(group: h5py.Group) -> None:
    """Clear ``group``'s seal before its datasets are written into (a no-op without a digest)."""
    if DIGEST in group and group[DIGEST][-1] != 0:
        group[DIGEST][-1] = 0
        group.file.flush()


def verify(path: Path, group: h5py.Group, sample: bool = True, complete: bool = False,
           rng: np.random.Generator | None = None) -> int | None:
    """Check ``group``'s datasets against its digest: ``sample``: the first, the last and ``SAMPLED`` random blocks
    of each; else every block. Returns the blocks checked; None where there is nothing to check: no digest (an older
    store) or no seal (a teacher group still being labelled; where it is ``complete``, one whose teacher step stopped
    between its last label and its seal), each logged once. StoreError naming the file and the dataset (or the
    digest) otherwise."""
    if DIGEST not in group:
        _note(path, group, logging.INFO, "has no content digest (written before hessdistill kept them); its datasets "
                                         "are not checked against changes")
        return None
    digest = group[DIGEST]
    block_bytes = digest.attrs.get("block_bytes")
    if not isinstance(block_bytes, (int, np.integer)) or block_bytes < 1 or digest.dtype != np.uint64:
        raise StoreError(f"{path}: {digest.name} has no valid block size or is not uint64; the file is damaged or "
                         f"was not written by hessdistill; {REBUILD}")
    entries = layout(group, int(block_bytes))
    total = sum(count for *_, count in entries)
    if digest.shape != (total + 1,):
        raise StoreError(f"{path}: {digest.name} has shape {digest.shape}, but the datasets of {group.name} need "
                         f"({total + 1},): a dataset was added, removed or resized; {REBUILD}")
    stored = digest[:]
    if stored[-1] == 0:
        if complete:
            _note(path, group, logging.WARNING, "is complete, but its content digest is not sealed (a teacher step "
                                                "stopped between its last label and its seal, or an edit); its "
                                                "datasets are not checked (a teacher group: rerun "
                                                "hessdistill-precompute for this teacher to seal it)")
        return None
    if stored[-1] != _seal(entries, stored[:-1]):
        raise StoreError(f"{path}: {digest.name} does not match itself or the names, types and shapes of "
                         f"{group.name}'s datasets: it or they were changed; {REBUILD}")
    rng = rng or np.random.default_rng()
    checked = 0
    for data, rows, first, count in entries:
        if not count:
            continue
        picks = range(count) if not sample else sorted({0, count - 1, *rng.integers(0, count, SAMPLED).tolist()})
        for b in picks:
            if _block_hash(_block(data, rows, b)) != stored[first + b]:
                end = min((b + 1) * rows, data.shape[0] if data.ndim else 1)
                raise StoreError(f"{path}: {data.name} does not match its content digest (block {b} of {count}: "
                                 f"entries {b * rows}..{end - 1}); it was changed after it was written, or the disk "
                                 f"damaged it; {REBUILD}")
            checked += 1
    return checked
