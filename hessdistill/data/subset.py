"""A subset config → its store: stream the source, keep what the selectors accept, write the store once, in chunks
(memory holds one chunk of kept structures and the reader's current molecule or material, not the source).

The subset's ``source`` is a Hydra call of any reader in ``hessdistill.data.sources``; ``select`` is a list of
selectors from ``hessdistill.data.selectors`` (all must accept a structure). The store records both, and a store
made with a different selection is refused rather than silently reused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from hessdistill.data.selectors import Selection
from hessdistill.data.store import CHUNK_STRUCTURES, EmptyStoreError, HessianStore, StoreError, write_structures

log = logging.getLogger(__name__)


def _selection(subset: DictConfig) -> list:
    chosen = subset.get("select")
    return [] if chosen is None else OmegaConf.to_container(chosen, resolve=True)


def build_store(subset: DictConfig, chunk_size: int = CHUNK_STRUCTURES) -> Path:
    """Path of the subset's store, creating it from ``subset.source`` and ``subset.select`` when missing.

    The source is read as a stream and filtered as it goes; kept structures are written ``chunk_size`` at a time."""
    path = Path(subset.store)
    wanted = json.dumps(_selection(subset), sort_keys=True)
    if path.exists():
        with HessianStore(path) as store:
            recorded = store.attributes.get("subset_select")
        if recorded is not None and recorded != wanted:
            raise StoreError(f"{path} was built with selection {recorded}, the subset config now asks for {wanted}; "
                             f"delete the store or set subset.store to a new file")
        return path
    selection = Selection([hydra.utils.instantiate(s) for s in subset.get("select") or []])
    kept = selection(hydra.utils.call(subset.source))
    path.parent.mkdir(parents=True, exist_ok=True)
    source = json.dumps(OmegaConf.to_container(subset.source, resolve=True), sort_keys=True)
    try:
        written = write_structures(path, kept, attrs={"subset_name": str(subset.name), "subset_source": source,
                                                      "subset_select": wanted}, chunk_size=chunk_size)
    except EmptyStoreError as exc:
        raise StoreError(f"subset {subset.name}: no structures of {selection.seen} from {subset.source.get('path')} "
                         f"pass the selection {wanted}") from exc
    selection.log_counts()
    log.info("wrote %d of %d structures from %s to %s", written, selection.seen, subset.source.get("path"), path)
    return path
