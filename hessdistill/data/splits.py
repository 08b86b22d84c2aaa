"""Deterministic train/val/test splits of a store, by structure or by group (molecule, material), and the
split file that records one so any later run can reuse it exactly.

Sizes are fractions (each in [0, 1], summing to ≤ 1) or, when they sum to more than 1, structure counts
(e.g. MD22's 600 training frames); the last size may be None for "the rest".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def split_counts(n: int, sizes: Sequence[float | None]) -> tuple[int, int, int]:
    """Structure counts (train, val, test) for n structures from fractions or counts (see module docstring)."""
    if len(sizes) != 3:
        raise ValueError(f"split needs three sizes (train, val, test), got {list(sizes)}")
    head = [float(x) for x in sizes[:2]]
    last = None if sizes[2] is None else float(sizes[2])
    given = head + ([] if last is None else [last])
    if any(x < 0 for x in given):
        raise ValueError(f"split sizes must be ≥ 0, got {list(sizes)}")
    if sum(given) <= 1.0 + 1e-9:  # fractions
        n_train = int(round(head[0] * n))
        n_val = min(int(round(head[1] * n)), n - n_train)  # rounding up twice never exceeds n
        rest = n - n_train - n_val
        n_test = rest if last is None else min(int(round(last * n)), rest)
    else:  # counts
        if any(x != int(x) for x in given):
            raise ValueError(f"split sizes must be fractions that sum to ≤ 1 or integer structure counts, "
                             f"got {list(sizes)}")
        n_train, n_val = int(head[0]), int(head[1])
        rest = n - n_train - n_val
        n_test = rest if last is None else int(last)
        if rest < 0 or n_test > rest:
            raise ValueError(f"split {list(sizes)} asks for more than the {n} structures available")
    return n_train, n_val, n_test


def split_indices(n: int, sizes: Sequence[float | None], seed: int,
                  groups: Sequence | None = None) -> dict[str, np.ndarray]:
    """Deterministic train/val/test index arrays (sorted) over range(n).

    groups: None splits structures by a seeded permutation. Otherwise groups (n,) labels (e.g. molecule names):
    whole groups are dealt, in a seeded order, to train until it holds its share of structures, then to val,
    then to test, so no molecule/system appears in two splits (shares are met as closely as group sizes allow).
    """
    n_train, n_val, n_test = split_counts(n, sizes)
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train : n_train + n_val]),
                "test": np.sort(perm[n_train + n_val : n_train + n_val + n_test])}
    labels = np.asarray([str(g) for g in groups])
    if len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} structures")
    names = np.unique(labels)
    members = {name: np.flatnonzero(labels == name) for name in names}
    out: dict[str, list[np.ndarray]] = {k: [] for k in SPLITS}
    targets = np.cumsum([n_train, n_val, n_test])  # running structure totals at the end of train, val, test
    filled, current = 0, 0
    for name in names[rng.permutation(len(names))]:
        size = len(members[name])
        # move on from a non-empty train/val split when this group would overshoot its target by more than the
        # split is short (the group fits the running total better in the next split)
        while current < 2 and out[SPLITS[current]] and filled + size - targets[current] > targets[current] - filled:
            current += 1
        if current == 2 and filled >= targets[2]:
            break
        out[SPLITS[current]].append(members[name])
        filled += size
        while current < 2 and filled >= targets[current]:
            current += 1
    return {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in out.items()}


def store_fingerprint(offsets: np.ndarray, z_blocks: Iterable[np.ndarray], position_blocks: Iterable[np.ndarray]
                      ) -> str:
    """SHA-1 of a store's atoms (offsets, then atomic numbers, then positions, each given as consecutive blocks of
    atoms, so a large store is hashed in bounded memory): a split file is valid only for this store."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(offsets, np.int64).tobytes())
    for block in z_blocks:
        h.update(np.ascontiguousarray(block, np.int64).tobytes())
    for block in position_blocks:
        h.update(np.ascontiguousarray(block, np.float64).tobytes())
    return h.hexdigest()


def write_split_file(path: str | Path, splits: dict[str, np.ndarray], fingerprint: str, **meta) -> None:
    """JSON with the index arrays, the store fingerprint and how the split was made (sizes, seed, split_by)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**meta, "store_fingerprint": fingerprint, **{k: splits[k].tolist() for k in SPLITS}}
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.rename(path)


def read_split_file(path: str | Path, fingerprint: str, n: int) -> dict[str, np.ndarray]:
    """Index arrays from a split file; raises ValueError if it belongs to another store or is malformed."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        splits = {k: np.asarray(record[k], dtype=np.int64) for k in SPLITS}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a split file ({type(exc).__name__}: {exc})") from exc
    if record.get("store_fingerprint") != fingerprint:
        raise ValueError(f"{path}: split was made for another store (fingerprint differs); delete it or point "
                         f"subset.split_file elsewhere to make a new one")
    every = np.concatenate(list(splits.values()))
    if len(every) and (every.min() < 0 or every.max() >= n or len(np.unique(every)) != len(every)):
        raise ValueError(f"{path}: indices out of range 0..{n - 1} or shared between splits")
    return splits
