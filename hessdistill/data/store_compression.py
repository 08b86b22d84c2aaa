"""Compress a finished store's teacher labels: chunked, shuffled, gzip or lzf HDF5 datasets.

Precompute writes into contiguous, preallocated datasets (kill-safe: a write never touches HDF5 metadata);
compressed datasets allocate chunks as they are written, so compression is a packing step for teachers whose
every structure is done. The packed copy is written to ``<store>.<pid>.partial`` and renamed over the store
(``store_files.replacing``, after a check that a copy of the store's size fits), so a killed or failed run leaves
the store as it was; the store's lock is held from the first read to the rename. Content digests are of the values,
so they hold for the packed copy. Readers need nothing: h5py decompresses transparently.

Chunks hold ``CHUNK_ENTRIES`` values (128 KiB of float32): one structure's rows span one or two chunks for
molecules of up to ~60 atoms, so a random structure's rows cost a chunk decompression or two
(``benchmarks/store_layouts.py`` prints sizes and read times for every layout, dtype and filter).
"""

from __future__ import annotations

from pathlib import Path

import h5py

from hessdistill.data.store import HessianStore, StoreError
from hessdistill.data.store_files import replacing, require_space, store_lock

COMPRESSIONS = ("gzip", "lzf")
CHUNK_ENTRIES = 2**15
PACKED = ("hessian", "forces", "node_features")  # the large per-atom or per-entry datasets of a teacher group


def compress_store(path: str | Path, compression: str = "gzip", level: int = 4) -> dict:
    """Rewrite the store at ``path`` with its teachers' Hessians, forces and node features compressed.

    compression: "gzip" (level 1–9) or "lzf" (faster, less compact); both after a byte-shuffle filter, which
    groups the exponent bytes of the floats. Every teacher must be complete (StoreError naming the teacher
    otherwise). Returns the file size before and after, in bytes.
    """
    path = Path(path)
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {COMPRESSIONS}")
    options = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        options["compression_opts"] = int(level)
    with store_lock(path):  # read and replaced as one step: no other writer's labels lost in between
        with HessianStore(path) as store:
            for name in store.teachers():
                done = store.teacher_done(name)
                if not done.all():
                    raise StoreError(f"{path}: teacher {name!r} has {int(done.sum())}/{len(done)} structures labelled; "
                                     f"finish precompute before compressing (compressed datasets are not kill-safe "
                                     f"to write into)")
            todo = [f"{name}/{key}" for name in store.teachers() for key, data in store.teacher_group(name).items()
                    if _packable(key, data) and data.compression != compression]
        before = path.stat().st_size
        if not todo:  # already packed with this filter (e.g. a rerun of a finished precompute)
            return {"bytes_before": before, "bytes_after": before}
        require_space(path, before, f"compressing with {compression}")
        with replacing(path) as partial, h5py.File(path, "r") as src, h5py.File(partial, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            src.copy(src["structures"], dst, "structures")
            for name, group in src.get("teachers", {}).items():
                out = dst.require_group("teachers").create_group(name)
                out.attrs.update(dict(group.attrs))
                for key, data in group.items():
                    if _packable(key, data) and data.compression != compression:
                        _copy_compressed(data, out, key, options)
                    else:
                        group.copy(data, out, key)
        return {"bytes_before": before, "bytes_after": path.stat().st_size}


def _packable(key: str, data: h5py.Dataset) -> bool:
    return key in PACKED and data.size > 0


def _copy_compressed(data: h5py.Dataset, out: h5py.Group, key: str, options: dict) -> None:
    """Copy ``data`` into a chunked, compressed ``out[key]``, CHUNK_ENTRIES values per chunk, in slabs of chunks."""
    row = max(1, data.size // data.shape[0])  # values per leading index
    rows = max(1, min(data.shape[0], CHUNK_ENTRIES // row))
    target = out.create_dataset(key, data.shape, data.dtype, chunks=(rows, *data.shape[1:]), **options)
    step = rows * 64
    for start in range(0, data.shape[0], step):
        target[start : start + step] = data[start : start + step]
