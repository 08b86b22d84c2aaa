"""A subset config → its store: stream the source, keep what the selectors accept, write the store once, in chunks
(memory holds one chunk of kept structures and the reader's current molecule or material, not the source).

The subset's ``source`` is a Hydra call of any reader in ``hessdistill.data.sources``; ``select`` is a list of
selectors from ``hessdistill.data.selectors`` (all must accept a structure). The store records both (the source
as reader, arguments and file content: ``source_record``), and a store made from another source or selection is
refused rather than silently reused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from hessdistill.data.selectors import Selection
from hessdistill.data.source_record import check_source, source_record
from hessdistill.data.store import CHUNK_STRUCTURES, EmptyStoreError, HessianStore, StoreError, write_structures
from hessdistill.data.structures import InvalidStructureError, Structure

log = logging.getLogger(__name__)


def _selection(subset: DictConfig) -> list:
    chosen = subset.get("select")
    return [] if chosen is None else OmegaConf.to_container(chosen, resolve=True)


def _read_source(subset: DictConfig, require_labels: bool = True) -> Iterable[Structure]:
    """The structures of ``subset.source``, as the reader streams them (``require_labels`` False: the reader is told
    to accept structures without reference labels); a reader's own error at the call (naming the file) is raised as
    it is, not inside Hydra's "Error in call to target" wrapper (errors met while streaming are raised by the reader
    as they are anyway)."""
    try:
        return hydra.utils.call(subset.source, **({} if require_labels else {"require_labels": False}))
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (InvalidStructureError, FileNotFoundError)):
            raise exc.__cause__ from None
        raise


def build_store(subset: DictConfig, chunk_size: int = CHUNK_STRUCTURES, require_labels: bool = True) -> Path:
    """Path of the subset's store, creating it from ``subset.source`` and ``subset.select`` when missing; a store
    built from another source (reader, arguments, file content) or selection is refused, naming both.

    The source is read as a stream and filtered as it goes; kept structures are written ``chunk_size`` at a time.
    require_labels: False keeps structures without reference energy or forces (``reference=teacher``: the teacher
    labels them); an existing store is returned as it is either way (``check_reference`` judges it)."""
    path = Path(subset.store)
    wanted = json.dumps(_selection(subset), sort_keys=True)
    rebuild = (f"rebuild it: delete {path} (its teacher labels go with it) and rerun `hessdistill-precompute "
               f"subset={subset.name} teacher=<teacher>`, or set subset.store to a new file")
    if path.exists():
        with HessianStore(path) as store:
            recorded, built_from = store.attributes.get("subset_select"), store.attributes.get("subset_source_record")
        if recorded is not None and recorded != wanted:
            raise StoreError(f"{path} was built with selection {recorded}, the subset config now asks for {wanted}; "
                             f"{rebuild}")
        if built_from is not None:
            check_source(path, built_from, subset.source, rebuild)
        return path
    record = json.dumps(source_record(subset.source))  # before reading: the file as it was read
    selection = Selection([hydra.utils.instantiate(s) for s in subset.get("select") or []])
    kept = selection(_read_source(subset, require_labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    source = json.dumps(OmegaConf.to_container(subset.source, resolve=True), sort_keys=True)
    try:
        written = write_structures(path, kept, attrs={"subset_name": str(subset.name), "subset_source": source,
                                                      "subset_select": wanted, "subset_source_record": record},
                                   chunk_size=chunk_size, require_labels=require_labels)
    except FileExistsError:  # another process (e.g. a precompute of another teacher) built it meanwhile: use theirs
        return build_store(subset, chunk_size, require_labels)
    except EmptyStoreError as exc:
        raise StoreError(f"subset {subset.name}: no structures of {selection.seen} from {subset.source.get('path')} "
                         f"pass the selection {wanted}") from exc
    selection.log_counts()
    log.info("wrote %d of %d structures from %s to %s", written, selection.seen, subset.source.get("path"), path)
    return path
