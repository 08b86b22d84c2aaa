"""Sharded precompute: shard i of n labels every n-th structure into its own file (one process or GPU each, e.g. a
SLURM array); ``merge_shards`` joins the finished shard files into the store through the store's API."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hessdistill.data.store import HessianStore, StoreError


def parse_shard(shard: str) -> tuple[int, int]:
    """"i/n" → (i, n) with 0 ≤ i < n."""
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError as exc:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {shard!r}") from exc
    if not 0 <= i < n:
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


def shard_indices(n_structures: int, i: int, n: int) -> np.ndarray:
    """Structures of shard i of n: every n-th one from i, so shards get similar mixes of sizes."""
    return np.arange(i, n_structures, n)


def shard_path(store_path: Path, teacher: str, i: int, n: int) -> Path:
    return store_path.with_name(f"{store_path.stem}.{teacher}.shard-{i}-of-{n}.h5")


def open_shard(store: HessianStore, teacher: str, i: int, n: int) -> HessianStore:
    """The shard file of shard i/n (created with a copy of the store's structures on first use)."""
    path = shard_path(store.path, teacher, i, n)
    if not path.exists():
        store.copy_structures(path)
    return HessianStore(path, mode="a")


def merge_shards(store: HessianStore, teacher: str, n: int) -> int:
    """Copy the finished structures of all n shard files of ``teacher`` into ``store``; returns how many.

    Every shard must exist, hold the same structures as the store and have finished its part (each shard's content
    digest, written when it finished, is checked as it is opened); blocks are copied verbatim
    (``HessianStore.copy_teacher_labels``, which writes the merged group's digest once it is complete), so a killed
    merge can be rerun.
    """
    paths = [shard_path(store.path, teacher, i, n) for i in range(n)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot merge {teacher!r} shards of {store.path}: missing {missing}")
    merged = 0
    for i, path in enumerate(paths):
        with HessianStore(path) as shard:
            if shard.fingerprint() != store.fingerprint():
                raise StoreError(f"{path} holds different structures from {store.path}")
            mine = shard_indices(len(store), i, n)
            done = shard.teacher_done(teacher)[mine]
            if not done.all():
                raise StoreError(f"{path}: shard {i}/{n} has not finished ({int(done.sum())}/{len(mine)} structures);"
                                 f" rerun it before merging")
            store.copy_teacher_labels(shard, teacher, mine)
            merged += len(mine)
    return merged
