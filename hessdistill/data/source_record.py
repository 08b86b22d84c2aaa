"""What a subset's store was built from, recorded in the store and compared when the store is reused: the reader,
its arguments with their defaults filled in (units included), and the source file's size and a cheap content hash.

The hash is SHA-1 of the whole file up to ``WHOLE_BYTES``; of a larger file, SHA-1 of ``SAMPLES`` blocks of
``SAMPLE_BYTES`` spread evenly over it (4 MiB read however large the file), with its size: an edit that keeps the
size and misses every block goes unseen. The file's path and modification time are recorded for the error message
only: a store whose source was moved or copied unchanged is reused, and a source that is gone is not checked.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from hessdistill.data.store_files import StoreError

WHOLE_BYTES = 2**26
SAMPLES, SAMPLE_BYTES = 64, 2**16


def content_hash(path: Path) -> str:
    """SHA-1 hex of the file (whole, or sampled blocks when larger than ``WHOLE_BYTES``)."""
    size, digest = path.stat().st_size, hashlib.sha1()
    with path.open("rb") as f:
        if size <= WHOLE_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        else:
            for k in range(SAMPLES):
                f.seek((size - SAMPLE_BYTES) * k // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def source_record(source: DictConfig) -> dict:
    """The record of ``subset.source`` (a Hydra call of a reader): reader, arguments (defaults filled in, ``path``
    apart), and for a source file that exists its path, size (bytes), modification time and content hash."""
    arguments = OmegaConf.to_container(source, resolve=True)
    reader = arguments.pop("_target_")
    try:
        bound = inspect.signature(hydra.utils.get_method(reader)).bind_partial(**arguments)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
    except (TypeError, ValueError, ImportError):  # the call itself will say what is wrong with it
        pass
    path = arguments.pop("path", None)
    record = {"reader": reader, "arguments": json.loads(json.dumps(arguments, default=str))}
    if path is not None:
        path = Path(path).resolve()
        record["path"] = str(path)
        if path.is_file():
            stat = path.stat()
            record.update(size=stat.st_size, modified=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stat.st_mtime)),
                          sha1=content_hash(path))
    return record


def _defaults(reader: str) -> dict:
    """The reader's keyword defaults (empty when it cannot be inspected)."""
    try:
        parameters = inspect.signature(hydra.utils.get_method(reader)).parameters.values()
    except (TypeError, ValueError, ImportError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _differences(old: dict, new: dict) -> list[str]:
    out = [f"reader {old['reader']} -> {new['reader']}"] if old["reader"] != new["reader"] else []
    was, now = old["arguments"], new["arguments"]
    # an argument the reader gained since the store was built reads what the store read while it keeps its default
    added = {key for key, value in _defaults(new["reader"]).items() if key not in was and now.get(key) == value}
    out += [f"{key} {was.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(was) | set(now))
            if was.get(key) != now.get(key) and key not in added]
    if "sha1" in old and "sha1" in new and (old["size"], old["sha1"]) != (new["size"], new["sha1"]):
        out.append(f"file content ({old['size']} bytes modified {old['modified']}, sha1 {old['sha1'][:12]} -> "
                   f"{new['size']} bytes modified {new['modified']}, sha1 {new['sha1'][:12]})")
    return out


def check_source(store: Path, recorded: str, source: DictConfig, rebuild: str) -> None:
    """StoreError naming the store, both sources and what differs, with ``rebuild`` (how to rebuild the store),
    unless ``source`` still reads what the store's ``recorded`` source (JSON of ``source_record``) read."""
    old, new = json.loads(recorded), source_record(source)
    changed = _differences(old, new)
    if changed:
        raise StoreError(f"{store} is stale: it was built from {old.get('path', old['reader'])}, the subset now reads "
                         f"{new.get('path', new['reader'])}, and they differ in {'; '.join(changed)}; {rebuild}")
